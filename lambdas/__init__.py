"""AWS Lambda functions: thin Powertools handlers over pure logic modules."""
