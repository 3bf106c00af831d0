"""Lambda benchmarks: email handler CPU and SES calls (bulk vs single), certificate throughput.

Run alone with ``python -m bench.lambdas_bench``; writes ``bench/results/lambdas.json``.

Email figures run the real ``EmailBatchSender`` against small in-memory stand-ins for
DynamoDB, SQS and SES (no network, no emulator), so the CPU figure is the handler's own
work per email: claims, message building, bulk grouping, results. Time is virtual: the
shared rate limiter sleeps on a simulated clock, which also gives the send time at the
account's rate. Certificates: per script, ours against mod_customcert's engine TCPDF
(Debian's php-tcpdf) on the same design, in alternating rounds; then memory over 1,000
certificates and with 40 companies' distinct large logos.
"""

from __future__ import annotations

import io
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from PIL import Image

from certificate_render.fonts import FontLibrary
from certificate_render.renderer import render_certificate
from certificate_render.template import PACKAGE_DIR, TemplateStore, default_document, default_template
from lambdas.common.idempotency import IdempotencyStore
from lambdas.common.pacing import SharedRateLimiter
from lambdas.email.contents import ObjectFetcher
from lambdas.email.sender import EmailBatchSender
from lambdas.email.ses import SesSender
from lambdas.results.queue import ResultsQueue

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "lambdas.json"
TCPDF = Path("/usr/share/php/tcpdf/tcpdf.php")
EMAILS = 1000
RATE = 100  # MaxSendRate of a typical production account (per second)


class MemoryDynamo:
    """Just the DynamoDB semantics the sender uses: conditional puts, batch writes, ADD."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.calls = 0

    def _fail(self, code: str) -> None:
        raise ClientError({"Error": {"Code": code, "Message": code}}, "op")

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> None:
        self.calls += 1
        keys = [t["Put"]["Item"]["id"]["S"] for t in TransactItems]
        if any(k in self.items for k in keys):
            self._fail("TransactionCanceledException")
        for t in TransactItems:
            self.items[t["Put"]["Item"]["id"]["S"]] = t["Put"]["Item"]

    def put_item(self, TableName: str, Item: dict[str, Any], **kw: Any) -> None:
        self.calls += 1
        if "ConditionExpression" in kw and Item["id"]["S"] in self.items:
            self._fail("ConditionalCheckFailedException")
        self.items[Item["id"]["S"]] = Item

    def get_item(self, TableName: str, Key: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.calls += 1
        item = self.items.get(Key["id"]["S"])
        return {"Item": item} if item else {}

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        found = {
            table: [self.items[k["id"]["S"]] for k in request["Keys"] if k["id"]["S"] in self.items]
            for table, request in RequestItems.items()
        }
        return {"Responses": found, "UnprocessedKeys": {}}

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        for requests in RequestItems.values():
            for request in requests:
                item = request["PutRequest"]["Item"]
                self.items[item["id"]["S"]] = item
        return {}

    def delete_item(self, TableName: str, Key: dict[str, Any], **kw: Any) -> None:
        self.calls += 1
        self.items.pop(Key["id"]["S"], None)

    def update_item(self, TableName: str, Key: dict[str, Any], **kw: Any) -> None:
        self.calls += 1
        values = kw["ExpressionAttributeValues"]
        item = self.items.setdefault(Key["id"]["S"], {"used": {"N": "0"}})
        used, n, cap = int(item["used"]["N"]), int(values[":n"]["N"]), int(values[":cap"]["N"])
        if used > cap:
            self._fail("ConditionalCheckFailedException")
        item["used"] = {"N": str(used + n)}


class MemorySes:
    def __init__(self) -> None:
        self.calls = 0
        self.bytes = 0

    def send_email(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        self.bytes += len(params["Content"]["Raw"]["Data"])
        return {"MessageId": f"m-{self.calls}"}

    def send_bulk_email(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        entries = params["BulkEmailEntries"]
        return {
            "BulkEmailEntryResults": [
                {"Status": "SUCCESS", "MessageId": f"b-{i}"} for i in range(len(entries))
            ]
        }


class MemorySqs:
    def __init__(self) -> None:
        self.messages = 0

    def send_message_batch(self, QueueUrl: str, Entries: list[Any]) -> dict[str, Any]:
        self.messages += len(Entries)
        return {}

    def send_message(self, **kw: Any) -> dict[str, Any]:
        self.messages += 1
        return {}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def email_batches(kind: str) -> list[dict[str, Any]]:
    batches = []
    per_batch = 200
    for b in range(EMAILS // per_batch):
        recipients, contents = [], {}
        for i in range(per_batch):
            n = b * per_batch + i
            r: dict[str, Any] = {
                "recipient_id": f"r-{n}",
                "to": f"user{n}@example.org",
                "name": f"User Number {n}",
            }
            if kind == "campaign":
                r["content_id"] = "t-1"
                r["data"] = {"firstname": f"User{n}", "course": "Workplace Safety 101"}
                r["unsubscribe_url"] = f"https://offload.example/v1/unsubscribe/token{n:08d}"
            else:  # IOMAD: every body rendered with the user's own details
                r["content_id"] = f"e-{n}"
                contents[f"e-{n}"] = {
                    "kind": "rendered",
                    "subject": "A new on-line learning account has been created for you",
                    "html": f"<p>Dear User {n},</p><p>Username: user{n}</p>"
                    + "<p>Welcome to the portal.</p>" * 20,
                }
            recipients.append(r)
        if kind == "campaign":
            contents["t-1"] = {
                "kind": "template",
                "engine": "jinja2",
                "subject": "We miss you, {{ firstname }}",
                "html": "<html><body><h1>Hello {{ firstname }}</h1><p>{{ course }} is waiting for you.</p>"
                + "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>" * 20
                + "</body></html>",
            }
        batches.append(
            {
                "type": "email_batch", "contract_version": 1, "batch_id": f"b-{b}", "job_id": f"j-{kind}",
                "company_id": 7, "attempt": 1, "created_at": 1795361900,
                "callback": {"url": "https://moodle.example.org/cb", "key_id": "k2026.c7"},
                "category": "campaign" if kind == "campaign" else "transactional",
                "sender": {"address": "noreply@acme.example", "name": "Acme Training"},
                "contents": contents, "recipients": recipients,
            }
        )  # fmt: skip
    return batches


def run_email(kind: str, allow_bulk: bool) -> dict[str, Any]:
    dynamo, ses, sqs, clock = MemoryDynamo(), MemorySes(), MemorySqs(), Clock()
    limiter = SharedRateLimiter(dynamo, "t", RATE, clock=clock.time, sleep=clock.sleep)
    ses_sender = SesSender(ses, "offload")
    sender = EmailBatchSender(
        store=IdempotencyStore(dynamo, "t", clock=clock.time),
        limiter=limiter,
        ses=ses_sender,
        fetcher=ObjectFetcher(None, "unused"),
        results=ResultsQueue(sqs, "results"),
        requeue=lambda batch, delay: None,
        lease_seconds=900,
        clock=clock.time,
        allow_bulk=allow_bulk,
    )
    batches = email_batches(kind)
    start_virtual = clock.now
    cpu0 = time.process_time()
    sent = 0
    for batch in batches:
        sent += sender.process(batch, lambda: 600_000).sent
    cpu = time.process_time() - cpu0
    calls = ses_sender.stats.send_email + ses_sender.stats.send_bulk_email
    return {
        "emails_sent": sent,
        "handler_cpu_ms_per_email": round(cpu * 1000 / sent, 3),
        "ses_calls_per_1000": round(calls * 1000 / sent, 1),
        "send_email_calls": ses_sender.stats.send_email,
        "send_bulk_email_calls": ses_sender.stats.send_bulk_email,
        "dynamodb_calls_per_1000": round(dynamo.calls * 1000 / sent, 1),
        "virtual_send_seconds_at_rate": round(clock.now - start_virtual, 2),
        "rate_per_second": RATE,
    }


CERT = {
    "learner_name": "Zoë Ørsted-Łukasiewicz",
    "course_name": "Workplace Safety 101",
    "completed_at": 1795361900,
    "grade": "92%",
    "verification_code": "AB12CD34EF",
    "issuer_name": "Acme Training Ltd",
}
VERIFY = "https://offload.example/v1/certificates/verify/AB12CD34EF"
FONTS = ROOT.parent / "lambdas" / "certificates" / "fonts"
#: label -> (learner name, course name, TCPDF regular font, TCPDF bold font). TCPDF gets the
#: same Noto font files as ours where it can read them (TrueType), and its own CID fonts for
#: CJK (it cannot embed CFF fonts; its CID fonts are not embedded at all, the cheapest case).
SCRIPTS: dict[str, tuple[str, str, str, str]] = {
    "latin": ("Zoë Ørsted-Łukasiewicz", "Workplace Safety 101", "dejavusans", "dejavusans"),
    "vietnamese": ("Nguyễn Thị Ánh", "An toàn lao động", "dejavusans", "dejavusans"),
    "greek": ("Ελένη Παπαδοπούλου", "Ασφάλεια στην εργασία", "dejavusans", "dejavusans"),
    "cyrillic": ("Жанна Иванова", "Охрана труда", "dejavusans", "dejavusans"),
    "arabic": ("محمد عبد الله", "السلامة في مكان العمل", "arabic-Regular.ttf", "arabic-Bold.ttf"),
    "hebrew": ("שרה כהן", "בטיחות במקום העבודה", "hebrew-Regular.ttf", "hebrew-Bold.ttf"),
    "devanagari": ("अनुराग शर्मा", "कार्यस्थल सुरक्षा", "devanagari-Regular.ttf", "devanagari-Bold.ttf"),
    "tamil": ("தமிழ்செல்வி", "பணியிட பாதுகாப்பு", "tamil-Regular.ttf", "tamil-Bold.ttf"),
    "thai": ("สมชาย ใจดี", "ความปลอดภัยในการทำงาน", "thai-Regular.ttf", "thai-Bold.ttf"),
    "chinese": ("朱镕基", "职业安全与健康101", "cid0cs", "cid0cs"),
    "japanese": ("山田さくら", "職場の安全衛生", "cid0jp", "cid0jp"),
    "korean": ("김민준", "직장 안전 교육", "cid0kr", "cid0kr"),
}
CJK = {"chinese", "japanese", "korean"}


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _ours(template: Any, library: FontLibrary, data: dict[str, Any], n: int) -> tuple[float, int]:
    cpu0 = time.process_time()
    size = 0
    for _ in range(n):
        size = len(render_certificate(template, data, VERIFY, library))
    return (time.process_time() - cpu0) / n, size


def _tcpdf(arguments: list[str]) -> tuple[float, int]:
    out = subprocess.run(arguments, check=True, capture_output=True, text=True)
    run = json.loads(out.stdout.strip().splitlines()[-1])
    return run["cpu_seconds"] / run["count"], int(run["bytes"])


def run_certificates(count: int, rounds: int = 3) -> dict[str, Any]:
    """Per script: ours and TCPDF in alternating rounds, the least disturbed round of each."""
    template = default_template()
    library = FontLibrary()
    php = shutil.which("php")
    have_tcpdf = php is not None and TCPDF.exists()
    per_script: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=ROOT / "results") as tmp:
        logo = Image.open(PACKAGE_DIR / "default-logo.png").convert("RGBA")
        flat = Image.new("RGB", logo.size, (255, 255, 255))
        flat.paste(logo, mask=logo.split()[3])  # TCPDF needs GD/Imagick for PNG alpha
        flat.save(Path(tmp) / "logo.jpg", quality=90)
        for label, (name, course, regular, bold) in SCRIPTS.items():
            data = dict(CERT, learner_name=name, course_name=course)
            render_certificate(template, data, VERIFY, library)  # warm-up: this script's glyphs
            fonts = [str(FONTS / f) if f.endswith(".ttf") else f for f in (regular, bold)]
            arguments = [
                php or "php", str(ROOT / "tcpdf_certificate.php"), str(count), str(Path(tmp) / "logo.jpg"),
                str(Path(tmp) / f"{label}.pdf"), name, course, *fonts, tmp,
            ]  # fmt: skip
            best_ours, best_tcpdf = float("inf"), float("inf")
            ours_bytes = tcpdf_bytes = 0
            for _ in range(rounds):  # alternate, so both see the same machine
                cpu, ours_bytes = _ours(template, library, data, count)
                best_ours = min(best_ours, cpu)
                if have_tcpdf:
                    cpu, tcpdf_bytes = _tcpdf(arguments)
                    best_tcpdf = min(best_tcpdf, cpu)
            figures: dict[str, Any] = {
                "ours_per_cpu_second": round(1 / best_ours, 1),
                "ours_bytes_per_pdf": ours_bytes,
            }
            if have_tcpdf:
                figures["tcpdf_per_cpu_second"] = round(1 / best_tcpdf, 1)
                figures["tcpdf_bytes_per_pdf"] = tcpdf_bytes
                figures["speedup_vs_tcpdf"] = round(best_tcpdf / best_ours, 2)
            per_script[label] = figures
    result: dict[str, Any] = {"per_script": per_script, "rounds": rounds, "certificates_per_round": count}
    if not have_tcpdf:
        result["tcpdf"] = "skipped: php or php-tcpdf not installed"
    result["memory"] = run_memory(template, library)
    result["template_images"] = run_template_images()
    return result


def run_memory(template: Any, library: FontLibrary, total: int = 1000) -> dict[str, Any]:
    """RSS after 100 and after 1,000 certificates with different names in several scripts."""
    names = [n for n, _, _, _ in SCRIPTS.values()]
    samples: dict[str, float] = {}
    for i in range(total):
        name = f"{names[i % len(names)]} {i}"
        render_certificate(
            template, dict(CERT, learner_name=name, verification_code=f"CODE{i:06d}"), VERIFY, library
        )
        if i + 1 in (100, total):
            samples[str(i + 1)] = round(rss_mb(), 1)
    return {
        "rss_mb_after_100": samples["100"],
        f"rss_mb_after_{total}": samples[str(total)],
        "growth_mb": round(samples[str(total)] - samples["100"], 1),
    }


class _MemoryS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:
        self.objects[Key] = Body

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": Key}}, "GetObject")
        return {"Body": io.BytesIO(self.objects[Key])}


def run_template_images(companies: int = 40, side: int = 1800) -> dict[str, Any]:
    """40 companies with distinct ~10 MB logos (the issue's case): RSS and PDF size stay bounded."""
    s3 = _MemoryS3()
    store = TemplateStore(s3, "bench")
    library = FontLibrary()
    document = {**default_document(), "logo": {"image": "logo.png", "x": 136.5, "y": 16, "w": 24}}
    logo_bytes = 0
    for company in range(companies):
        noise = Image.frombytes("RGB", (side, side), random.Random(company).randbytes(side * side * 3))
        out = io.BytesIO()
        noise.save(out, format="PNG", compress_level=1)
        logo_bytes = len(out.getvalue())
        s3.put_object(Bucket="bench", Key=f"templates/company-{company}/logo.png", Body=out.getvalue())
        s3.put_object(
            Bucket="bench", Key=f"templates/company-{company}/gold.json", Body=json.dumps(document).encode()
        )
    start = rss_mb()
    peak = start
    size = 0
    for company in range(companies):
        template = store.get(company, "gold")
        size = len(render_certificate(template, CERT, VERIFY, library))
        peak = max(peak, rss_mb())
    s3.objects.clear()
    return {
        "companies": companies,
        "logo_bytes_each": logo_bytes,
        "rss_growth_mb": round(peak - start, 1),
        "bytes_per_pdf": size,
    }


#: Script -> sample text for the coverage table (the last one is refused, as it should be).
COVERAGE = {
    "Latin (NFC; Vietnamese given decomposed)": "Zoë Łukasiewicz, " + unicodedata.normalize("NFD", "Nguyễn"),
    "Greek": "Ελένη Παπαδοπούλου",
    "Cyrillic": "Жанна Иванова",
    "Arabic": "محمد عبد الله",
    "Hebrew": "שרה כהן",
    "Devanagari": "अनुराग शर्मा",
    "Bengali": "রবীন্দ্রনাথ ঠাকুর",
    "Gurmukhi": "ਗੁਰਪ੍ਰੀਤ ਸਿੰਘ",
    "Gujarati": "પ્રિયા પટેલ",
    "Oriya": "ସୁବ୍ରତ ଦାସ",
    "Tamil": "தமிழ்செல்வி",
    "Telugu": "శ్రీనివాస్",
    "Kannada": "ಕೃಷ್ಣ ಮೂರ್ತಿ",
    "Malayalam": "ശ്രീക്കുട്ടി",
    "Sinhala": "සුනිල් පෙරේරා",
    "Thai": "สมชาย ใจดี",
    "Armenian, Georgian": "Արամ, ნინო",
    "Hangul": "김민준",
    "CJK ideographs (beyond GB2312)": "朱镕基 王喆 李堃",
    "Japanese kana": "さくら ヤマダ",
    "Emoji": "Zoë 😀",
}


def certificate_tables(certificates: dict[str, Any]) -> list[dict[str, Any]]:
    """The script coverage table (from the shipped fonts) and the per-script speed table."""
    library = FontLibrary()
    coverage_rows = []
    for script, sample in COVERAGE.items():
        text = unicodedata.normalize("NFC", sample)
        missing = library.unsupported(text)
        families = sorted({family for family, _ in library.itemize(text)} - {"latin"} or {"latin"})
        if missing:
            coverage_rows.append(
                [script, sample, "—", "refused: `unsupported_characters` " + " ".join(missing)]
            )
        else:
            names = {"latin": "Noto Sans", "cjk": "Noto Sans CJK"}
            fonts = ", ".join(names.get(f, f"Noto Sans {f.title()}") for f in families)
            coverage_rows.append([script, text, fonts, "printed"])
    speed_rows = []
    for script, f in certificates["per_script"].items():
        speed_rows.append(
            [
                script,
                f["ours_per_cpu_second"],
                f.get("tcpdf_per_cpu_second", "—"),
                f"{f['speedup_vs_tcpdf']}x" if "speedup_vs_tcpdf" in f else "—",
                round(f["ours_bytes_per_pdf"] / 1000, 1),
                round(f["tcpdf_bytes_per_pdf"] / 1000, 1) if "tcpdf_bytes_per_pdf" in f else "—",
            ]
        )
    return [
        {
            "title": "Certificate script coverage",
            "columns": ["script", "sample", "font", "result"],
            "rows": coverage_rows,
        },
        {
            "title": "Certificates per script against TCPDF (same design, alternating rounds, best of each)",
            "columns": ["script", "ours per CPU s", "TCPDF per CPU s", "speed-up", "ours KB", "TCPDF KB"],
            "rows": speed_rows,
        },
    ]


def main() -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    figures: dict[str, Any] = {
        "email_campaign_template_bulk": run_email("campaign", allow_bulk=True),
        "email_campaign_template_single_baseline": run_email("campaign", allow_bulk=False),
        "email_iomad_rendered_bodies_single": run_email("iomad", allow_bulk=True),
    }
    figures["certificates"] = certificates = run_certificates(6 if quick else 20, rounds=2 if quick else 3)
    per_script = certificates["per_script"]
    goals = {
        "ses_calls_per_1000_bulk_le_20": figures["email_campaign_template_bulk"]["ses_calls_per_1000"] <= 20,
        "latin_pdf_le_15KB": per_script["latin"]["ours_bytes_per_pdf"] <= 15_000,
        "cjk_pdf_le_40KB": all(per_script[s]["ours_bytes_per_pdf"] <= 40_000 for s in CJK),
        "memory_flat_over_1000_le_20MB": certificates["memory"]["growth_mb"] <= 20,
    }
    if "speedup_vs_tcpdf" in per_script["latin"]:
        goals["latin_ge_5x_tcpdf"] = per_script["latin"]["speedup_vs_tcpdf"] >= 5
        goals["every_other_script_ge_2x_tcpdf"] = all(
            f["speedup_vs_tcpdf"] >= 2 for s, f in per_script.items() if s != "latin"
        )
    figures["goals_met"] = goals
    payload = {
        "benchmark": "lambdas",
        "tables": certificate_tables(certificates),
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "figures": figures,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
