"""The bridge's own tables (SQLAlchemy Core), named and typed the Moodle way.

Names: at most 28 characters without the prefix, columns at most 30 (checked by tests).
The seeds' ``manireports_cloud_*`` names break that limit; the mapping is in docs/bridge.md.
Times are unix seconds (BIGINT). No table stores a plaintext password or a rendered body:
bodies stay in IOMAD's queue row until they are sent, and temporary passwords are kept
only encrypted (``mrcloud_recipients.secret``) until the recipient's outcome is final.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from moodle_bridge.storage.types import FLAG, ID, UNIXTIME

TABLE_NAMES = (
    "mrcloud_config",
    "mrcloud_company_settings",
    "mrcloud_jobs",
    "mrcloud_recipients",
    "mrcloud_batches",
    "mrcloud_claims",
    "mrcloud_audit_log",
    "mrcloud_nonces",
    "mrcloud_suppressions",
    "mrcloud_result_reports",
    "mrcloud_certificates",
    "mrcloud_campaigns",
    "mrcloud_campaign_ledger",
    "mrcloud_dash_sessions",
    "mrcloud_schedules",
    "mrcloud_schedule_runs",
    "mrcloud_completion_certs",
)


def _id() -> sa.Column[int]:
    return sa.Column("id", ID, primary_key=True, autoincrement=True)


@dataclass(frozen=True)
class BridgeTables:
    metadata: sa.MetaData
    config: sa.Table
    company_settings: sa.Table
    jobs: sa.Table
    recipients: sa.Table
    batches: sa.Table
    claims: sa.Table
    audit_log: sa.Table
    nonces: sa.Table
    suppressions: sa.Table
    result_reports: sa.Table
    certificates: sa.Table
    campaigns: sa.Table
    campaign_ledger: sa.Table
    dash_sessions: sa.Table
    schedules: sa.Table
    schedule_runs: sa.Table
    completion_certs: sa.Table


def build_bridge_tables(prefix: str = "mdl_") -> BridgeTables:
    m = sa.MetaData()
    p = prefix

    config = sa.Table(
        f"{p}mrcloud_config",
        m,
        _id(),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("timemodified", UNIXTIME, nullable=False, server_default="0"),
    )  # global switch ("offload_enabled"), schema_version, ...

    company_settings = sa.Table(
        f"{p}mrcloud_company_settings",
        m,
        _id(),
        sa.Column("companyid", sa.BigInteger, nullable=False, unique=True),
        sa.Column("cloudenabled", FLAG, nullable=False, server_default="0"),
        sa.Column("provider", sa.String(20), nullable=False, server_default="aws"),
        sa.Column("allowemail", FLAG, nullable=False, server_default="1"),
        sa.Column("allowcertificates", FLAG, nullable=False, server_default="0"),
        sa.Column("threshold", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("fallbacklocal", FLAG, nullable=False, server_default="1"),
        sa.Column("sesstenant", sa.String(64), nullable=True),
        sa.Column("senderaddress", sa.String(254), nullable=True),
        sa.Column("sendername", sa.String(255), nullable=True),
        sa.Column("certtemplate", sa.String(64), nullable=False, server_default="default"),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.Column("timemodified", UNIXTIME, nullable=False),
        sa.Column("modifiedby", sa.String(100), nullable=False, server_default=""),
    )

    jobs = sa.Table(
        f"{p}mrcloud_jobs",
        m,
        _id(),
        sa.Column("companyid", sa.BigInteger, nullable=False),
        sa.Column("jobtype", sa.String(20), nullable=False),  # email | certificate
        sa.Column("source", sa.String(20), nullable=False),  # iomad | list | campaign
        sa.Column("category", sa.String(20), nullable=False, server_default="transactional"),
        sa.Column("provider", sa.String(20), nullable=False),  # aws | cloudflare
        sa.Column("status", sa.String(20), nullable=False),
        # pending -> queued -> processing -> completed | partial_failure | failed
        #                      \-> cancelling -> cancelled   (docs/results.md)
        sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
        sa.Column("templatename", sa.String(100), nullable=True),
        sa.Column("template", sa.Text, nullable=True),  # jinja2 source (JSON) for list jobs
        sa.Column("recipientstotal", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("recipientssent", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("recipientsfailed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("recipientsbounced", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("recipientscomplained", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("recipientsskipped", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("recipientscancelled", sa.BigInteger, nullable=False, server_default="0"),
        # Added in schema version 5 (issue 12): separate counts, and cancellation reaching the cloud.
        sa.Column("recipientsdelivered", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("recipientsfellback", sa.BigInteger, nullable=False, server_default="0"),
        # When a cancel was requested, and when the cloud acknowledged it (cancel record written).
        sa.Column("timecancelrequested", UNIXTIME, nullable=True),
        sa.Column("timecancelsignalled", UNIXTIME, nullable=True),
        sa.Column("createdby", sa.String(100), nullable=False, server_default=""),
        sa.Column("lasterror", sa.Text, nullable=True),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.Column("timemodified", UNIXTIME, nullable=False),
        sa.Column("timesubmitted", UNIXTIME, nullable=True),
        sa.Column("timedeadline", UNIXTIME, nullable=True),
        sa.Column("timecompleted", UNIXTIME, nullable=True),
        sa.Index(f"{p}mrcljobs_comsta_ix", "companyid", "status"),
        sa.Index(f"{p}mrcljobs_sta_ix", "status"),
    )

    recipients = sa.Table(
        f"{p}mrcloud_recipients",
        m,
        _id(),
        sa.Column("jobid", sa.BigInteger, nullable=False),
        sa.Column("companyid", sa.BigInteger, nullable=False),
        sa.Column("emailid", sa.BigInteger, nullable=True),  # IOMAD queue row, when from IOMAD
        sa.Column("userid", sa.BigInteger, nullable=True),
        sa.Column("role", sa.String(20), nullable=False),  # user | to | cc | manager | supervisor | list
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("fullname", sa.String(255), nullable=False, server_default=""),
        sa.Column("dedupekey", sa.String(300), nullable=False),
        sa.Column("contentkey", sa.String(64), nullable=True),
        sa.Column("data", sa.Text, nullable=True),  # JSON: template data or certificate data
        sa.Column("status", sa.String(20), nullable=False),
        # pending | queued | sent | delivered | failed | bounced | complained | skipped | cancelled | restored
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("batchid", sa.BigInteger, nullable=True),
        sa.Column("providermessageid", sa.String(255), nullable=True),
        sa.Column("errorcode", sa.String(64), nullable=True),
        sa.Column("errormessage", sa.String(1000), nullable=True),
        sa.Column("secret", sa.Text, nullable=True),  # encrypted temporary password (AES-GCM)
        sa.Column("artifactkey", sa.String(1024), nullable=True),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.Column("timemodified", UNIXTIME, nullable=False),
        sa.Column("timefinal", UNIXTIME, nullable=True),
        sa.UniqueConstraint("jobid", "dedupekey", name=f"{p}mrclreci_jobded_uix"),
        sa.Index(f"{p}mrclreci_jobsta_ix", "jobid", "status"),
        sa.Index(f"{p}mrclreci_bat_ix", "batchid"),
        sa.Index(f"{p}mrclreci_ema_ix", "emailid"),
        sa.Index(f"{p}mrclreci_pro_ix", "providermessageid"),
        # Added in schema version 7, for the dashboard: a department manager's recipients (by user)
        # and the recipient search (address or name, by prefix) without scanning a whole job.
        sa.Index(f"{p}mrclreci_jobuse_ix", "jobid", "userid", "status"),
        sa.Index(f"{p}mrclreci_jobadd_ix", "jobid", "address"),
        sa.Index(f"{p}mrclreci_jobful_ix", "jobid", "fullname"),
    )

    batches = sa.Table(
        f"{p}mrcloud_batches",
        m,
        _id(),
        sa.Column("jobid", sa.BigInteger, nullable=False),
        sa.Column("batchkey", sa.String(64), nullable=False, unique=True),  # contract batch_id
        # Added in schema version 2 (moodle_bridge.storage.migrations): what the outbox needs to build
        # and sign the message without joining the job.
        sa.Column("companyid", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("messagetype", sa.String(20), nullable=False, server_default="email_batch"),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
        sa.Column("status", sa.String(20), nullable=False),  # pending | submitted | abandoned
        sa.Column("target", sa.String(20), nullable=False),  # sqs | api_gateway | worker
        sa.Column("recipientcount", sa.Integer, nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("nexttry", UNIXTIME, nullable=False, server_default="0"),
        sa.Column("lasterror", sa.String(1000), nullable=True),
        sa.Column("queuemessageid", sa.String(255), nullable=True),
        # Added in schema version 3: the submitter currently holding the batch (outbox lease).
        sa.Column("leasetoken", sa.String(36), nullable=True),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.Column("timesubmitted", UNIXTIME, nullable=True),
        sa.Index(f"{p}mrclbatc_stanex_ix", "status", "nexttry"),
        sa.Index(f"{p}mrclbatc_job_ix", "jobid"),
    )

    claims = sa.Table(
        f"{p}mrcloud_claims",
        m,
        _id(),
        sa.Column("emailid", sa.BigInteger, nullable=False, unique=True),
        sa.Column("companyid", sa.BigInteger, nullable=False),
        sa.Column("jobid", sa.BigInteger, nullable=True),
        sa.Column("templatename", sa.String(100), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),  # claimed | suppressed | released | completed
        sa.Column("originaldue", UNIXTIME, nullable=False),
        sa.Column("timeclaimed", UNIXTIME, nullable=False),
        sa.Column("timereleased", UNIXTIME, nullable=True),
        sa.Column("timefinal", UNIXTIME, nullable=True),
        # The template's sender display name and Reply-To (moodle_bridge.sources.iomad.template_sender).
        sa.Column("fromname", sa.String(255), nullable=True),
        sa.Column("replyto", sa.String(1333), nullable=True),
        # Added in schema version 5 (IOMAD's Resend): the how-manieth send of the row this claim
        # is (IOMAD's report resends by setting sent = NULL on the same row), and the row's
        # modifiedtime when the bridge released it (a later change means IOMAD sent it since).
        sa.Column("generation", sa.Integer, nullable=False, server_default="1"),
        sa.Column("rowmodified", UNIXTIME, nullable=True),
        sa.Index(f"{p}mrclclai_sta_ix", "state"),
        sa.Index(f"{p}mrclclai_job_ix", "jobid"),
    )

    audit_log = sa.Table(
        f"{p}mrcloud_audit_log",
        m,
        _id(),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.Column(
            "actor", sa.String(100), nullable=False
        ),  # cron | cli:<user> | callback:<key id> | dashboard:<user>
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("companyid", sa.BigInteger, nullable=True),
        sa.Column("jobid", sa.BigInteger, nullable=True),
        sa.Column("sourceaddress", sa.String(45), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),  # JSON; never payload secrets
        sa.Index(f"{p}mrclaudi_tim_ix", "timecreated"),
        sa.Index(f"{p}mrclaudi_job_ix", "jobid"),
    )

    nonces = sa.Table(
        f"{p}mrcloud_nonces",
        m,
        _id(),
        sa.Column("keyid", sa.String(40), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("timeexpires", UNIXTIME, nullable=False),
        sa.UniqueConstraint("keyid", "nonce", name=f"{p}mrclnonc_keynon_uix"),
        sa.Index(f"{p}mrclnonc_tim_ix", "timeexpires"),
    )

    suppressions = sa.Table(
        f"{p}mrcloud_suppressions",
        m,
        _id(),
        sa.Column("companyid", sa.BigInteger, nullable=False),
        sa.Column("address", sa.String(254), nullable=False),  # lower-cased
        sa.Column("reason", sa.String(20), nullable=False),  # bounce | complaint | unsubscribe
        sa.Column("source", sa.String(100), nullable=False, server_default=""),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.UniqueConstraint("companyid", "address", name=f"{p}mrclsupp_comadd_uix"),
    )

    result_reports = sa.Table(
        f"{p}mrcloud_result_reports",
        m,
        _id(),
        sa.Column("reportid", sa.String(64), nullable=False),
        sa.Column("companyid", sa.BigInteger, nullable=False),
        sa.Column("reporter", sa.String(30), nullable=False),
        sa.Column("resultcount", sa.Integer, nullable=False),
        sa.Column("timereceived", UNIXTIME, nullable=False),
        # A report id is the sender's idempotency key *within its company*: one company's key must
        # not be able to pre-claim another company's id (issue 18).
        sa.UniqueConstraint("companyid", "reportid", name=f"{p}mrcloud_resrep_comprep_uix"),
    )

    certificates = sa.Table(
        f"{p}mrcloud_certificates",
        m,
        _id(),
        sa.Column("companyid", sa.BigInteger, nullable=False),
        sa.Column("userid", sa.BigInteger, nullable=True),
        sa.Column("courseid", sa.BigInteger, nullable=True),
        sa.Column("recipientid", sa.BigInteger, nullable=False),
        sa.Column("verifycode", sa.String(32), nullable=False, unique=True),
        sa.Column("artifactkey", sa.String(1024), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("timeissued", UNIXTIME, nullable=True),
        sa.Column("timerevoked", UNIXTIME, nullable=True),
        sa.Index(f"{p}mrclcert_comuse_ix", "companyid", "userid"),
        # Added in schema version 14: a job's certificates list joins its recipients to this
        # table by recipient (without it, a scan of the table per recipient row).
        sa.Index(f"{p}mrclcert_rec_ix", "recipientid"),
    )

    campaigns = sa.Table(
        f"{p}mrcloud_campaigns",
        m,
        _id(),
        sa.Column("companyid", sa.BigInteger, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),  # active | paused
        sa.Column("rule", sa.Text, nullable=False),  # the validated rule as JSON (no secrets)
        sa.Column("createdby", sa.String(100), nullable=False),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.Column("timemodified", UNIXTIME, nullable=False),
        sa.Column("timelastrun", UNIXTIME, nullable=True),
        sa.Index(f"{p}mrclcamp_comsta_ix", "companyid", "status"),
    )

    # One row per (campaign, user, cycle): written in the same transaction as the job's
    # recipients, so a reminder is planned once per cycle whatever crashes or overlaps.
    campaign_ledger = sa.Table(
        f"{p}mrcloud_campaign_ledger",
        m,
        _id(),
        sa.Column("campaignid", ID, nullable=False),
        sa.Column("userid", sa.BigInteger, nullable=False),
        sa.Column("cycle", sa.BigInteger, nullable=False),
        sa.Column("jobid", ID, nullable=False),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.UniqueConstraint("campaignid", "userid", "cycle", name=f"{p}mrclcampledg_camusecyc_uix"),
    )

    # Added in schema version 6: dashboard sessions (moodle_bridge.web.auth). The cookie holds a
    # random id; only its SHA-256 is stored. ``principal`` is the rights last read from Moodle.
    dash_sessions = sa.Table(
        f"{p}mrcloud_dash_sessions",
        m,
        _id(),
        sa.Column("sessionhash", sa.String(64), nullable=False, unique=True),
        sa.Column("userid", sa.BigInteger, nullable=False),
        sa.Column("companyid", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("principal", sa.Text, nullable=False),
        sa.Column("csrftoken", sa.String(64), nullable=False),
        sa.Column("sourceaddress", sa.String(45), nullable=True),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.Column("timechecked", UNIXTIME, nullable=False),
        sa.Column("timeexpires", UNIXTIME, nullable=False),
        sa.Index(f"{p}mrcldashsess_tim_ix", "timeexpires"),
    )

    # Added in schema version 11 (docs/schedules.md): the columns of the original plan's
    # ``manireports_schedules`` (cloud_preference ... suppress_course_completion) plus what the
    # bridge needs to fire at a local time and to say what it sends.
    schedules = sa.Table(
        f"{p}mrcloud_schedules",
        m,
        _id(),
        sa.Column("companyid", sa.BigInteger, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),  # active | paused
        sa.Column("cloud_preference", sa.String(20), nullable=False, server_default="auto"),
        sa.Column("action_type", sa.String(20), nullable=False, server_default="email"),
        sa.Column("frequency", sa.String(10), nullable=False),  # daily | weekdays | ... | custom
        sa.Column("custom_interval", sa.BigInteger, nullable=False, server_default="0"),  # days
        sa.Column("suppresstarget", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("suppress_course_completion", FLAG, nullable=False, server_default="0"),
        sa.Column("timezone", sa.String(100), nullable=False),
        sa.Column("startdate", sa.String(10), nullable=False),  # local YYYY-MM-DD: the anchor
        sa.Column("timeofday", sa.Integer, nullable=False),  # minutes after local midnight
        sa.Column("campaignid", sa.BigInteger, nullable=True),  # action email
        sa.Column("report", sa.String(30), nullable=True),  # action report
        sa.Column("format", sa.String(4), nullable=False, server_default="csv"),  # csv | xlsx
        sa.Column("reportdays", sa.Integer, nullable=False, server_default="7"),
        sa.Column("skipifempty", FLAG, nullable=False, server_default="1"),
        sa.Column("manireportsid", sa.BigInteger, nullable=True),  # row of manireports_schedules
        # Added in schema version 13: action certificate's course, and its cohort (optional).
        sa.Column("courseid", sa.BigInteger, nullable=True),
        sa.Column("cohortid", sa.BigInteger, nullable=True),
        sa.Column("createdby", sa.String(100), nullable=False),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.Column("timemodified", UNIXTIME, nullable=False),
        sa.Column("lastslot", UNIXTIME, nullable=True),
        sa.Column("nextrun", UNIXTIME, nullable=True),
        sa.Index(f"{p}mrclsche_stanex_ix", "status", "nextrun"),
        sa.Index(f"{p}mrclsche_com_ix", "companyid"),
    )

    # One row per (schedule, slot): written in the transaction that creates the slot's job, so
    # two bridges, an overlapping run or a restart never fire a slot twice.
    schedule_runs = sa.Table(
        f"{p}mrcloud_schedule_runs",
        m,
        _id(),
        sa.Column("scheduleid", ID, nullable=False),
        sa.Column("slot", UNIXTIME, nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),  # queued | empty | not_sent | failed
        sa.Column("jobid", sa.BigInteger, nullable=True),
        sa.Column("rowcount", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("detail", sa.String(1000), nullable=False, server_default=""),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.UniqueConstraint("scheduleid", "slot", name=f"{p}mrclschrun_schslo_uix"),
    )

    # Added in schema version 12: the ledger of store-only certificates (completions IOMAD does
    # not mail). One row per (user, course, completion), written in the same transaction as the
    # job and its recipients, so a completion gets one certificate whatever restarts or overlaps.
    completion_certs = sa.Table(
        f"{p}mrcloud_completion_certs",
        m,
        _id(),
        sa.Column("companyid", sa.BigInteger, nullable=False),
        sa.Column("userid", sa.BigInteger, nullable=False),
        sa.Column("courseid", sa.BigInteger, nullable=False),
        sa.Column("completionid", sa.BigInteger, nullable=False),  # course_completions.id
        sa.Column("timecompleted", UNIXTIME, nullable=False),
        sa.Column("jobid", ID, nullable=False),
        sa.Column("timecreated", UNIXTIME, nullable=False),
        sa.UniqueConstraint("userid", "courseid", "completionid", name=f"{p}mrclcompcert_usecoucom_uix"),
        sa.Index(f"{p}mrclcompcert_com_ix", "completionid"),
    )

    return BridgeTables(
        m,
        config,
        company_settings,
        jobs,
        recipients,
        batches,
        claims,
        audit_log,
        nonces,
        suppressions,
        result_reports,
        certificates,
        campaigns,
        campaign_ledger,
        dash_sessions,
        schedules,
        schedule_runs,
        completion_certs,
    )
