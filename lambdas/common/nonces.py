"""A DynamoDB nonce store for signed requests (offload_contract.signing.NonceStore)."""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError


class DynamoNonceStore:
    def __init__(self, dynamodb: Any, table: str, clock: Any = time.time) -> None:
        self._db = dynamodb
        self._table = table
        self._clock = clock

    def remember(self, key_id: str, nonce: str, expires_at: int) -> bool:
        try:
            self._db.put_item(
                TableName=self._table,
                Item={"id": {"S": f"nonce#{key_id}#{nonce}"}, "expiration": {"N": str(expires_at)}},
                ConditionExpression="attribute_not_exists(id) OR expiration < :now",
                ExpressionAttributeValues={":now": {"N": str(int(self._clock()))}},
            )
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
