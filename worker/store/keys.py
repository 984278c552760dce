"""Every Redis key this service owns, in one registry. Nothing else builds a key name.

``P`` is ``KEY_PREFIX`` (default ``bmw``)::

    P:d:{id}                hash    a delivery: its status (worker/states.py), page, recipient,
                                    body (these three and what else the request said packed in
                                    one field, ``in``), attempts, times, claim (fence token) and
                                    lease, error … (fields: worker/store/records.py). An open delivery or a
                                    dead letter (which keeps its body until replayed or purged);
                                    any other final delivery leaves it for P:o:
    P:o:{hour}:{suffix}     hash    final records (sent, failed, expired, cancelled), one short
                                    value each: id (16 raw bytes) -> the outcome fields as a
                                    MessagePack array (worker/store/outcomes.py); the bucket of
                                    the hour they ended in and their id's last 4 characters;
                                    expires RECORD_RETENTION after its hour. The Lua scripts
                                    build it from P:d: (P:o:)
    P:o:meta                hash    raw: the hour outcomes' fields first were raw ids (the hex
                                    ones of that hour and before are read too)
    P:open:n                hash    second -> how many deliveries accepted in it are open and not
                                    parked (the backlog age; worker/store/ages.py)
    P:open:s                zset    those seconds (score = the second): the oldest is the first
    P:open:c                string  their sum: how many are open and not parked
    P:open                  zset    before P:open:n: every open delivery -> its acceptance time;
                                    its members leave as they end, it is never written anew
    P:pending               zset    open work -> when it must have progressed: "b:{bid}" a
                                    queued batch, "t:{bid}:{token}" the deliveries one claim took
                                    from it, "{id}" one delivery (named ids, retries, parks,
                                    replays); the sweeper re-enqueues what is past it (lost Celery
                                    messages, a holder that stopped renewing its lease;
                                    store/lua/sweep.lua)
    P:sched                 zset    deliveries waiting for a due time -> that time (retries,
                                    rate limits, paused pages, pacing slots); the scheduler
                                    releases them to the queue, never a Celery countdown
    P:sched:tick            string  the last scheduler tick (60 s TTL; a write every tick)
    P:dead                  zset    dead letters -> time of death
    P:parked                zset    every parked delivery -> accepted at
    P:park:{page}:{psid}    zset    the deliveries parked for one recipient -> accepted at
    P:hist:{id}             list    a delivery's history: one JSON entry per round that did not
                                    end in a first-try send (the last 20; MESSAGE_TTL +
                                    RECORD_RETENTION)
    P:i:{window}:{suffix}   hash    Idempotency-Keys (8 raw bytes of a digest of caller:page:key;
                                    its hex when written before that) -> delivery id (its 16 raw
                                    bytes; hex when written before that);
                                    window = ⌊Redis time / IDEMPOTENCY_TTL⌋, expires at the end of
                                    the next (worker/store/idempotency.py)
    P:i:meta                hash    since: when the buckets above first ran on this shard (until
                                    one IDEMPOTENCY_TTL later accept.lua also reads P:idem:); raw:
                                    when raw fields did (hex ones are read for two windows after;
                                    0: none was ever written here); ttl:
                                    the TTL their windows are numbered by; before, changed: the TTL
                                    before a change and when (its windows are read while they live)
    P:idem:{key}            string  before buckets: Idempotency-Key -> delivery id (IDEMPOTENCY_TTL;
                                    read, never written, left to expire)
    P:batch:{bid}           list    ids gathered for one ``worker.deliver_batch`` message while it
                                    waits in the queue (taken whole by the claim; no expiry: its
                                    "b:" entry in pending names it)
    P:batch:{bid}:t:{token} list    the same ids as one claim took them, kept while the claim's
                                    "t:" entry in pending is (a claim that held none: briefly)
    P:gather:{queue}        string  the queue's newest batch id (commits append to it)
    P:supp:{page}:{psid}    string  recipient unreachable (SUPPRESSION_TTL)
    P:supptag:{page}:{psid} string  tagged sends suppressed after a tag-abuse warning
    P:wu:{page}:{psid}      string  when the PSID's window closes (epoch s): its last interaction
                                    + 24 h, or + 7 days after a Click-to-Messenger ad
                                    (WINDOW_MEMORY_SECONDS). Before routes: P:win, left to expire
    P:wcl:{page}:{psid}     string  when Graph last said the window is closed (epoch s;
                                    WINDOW_RECHECK_SECONDS)
    P:ext:{page}:{psid}     string  Braze external_id learned from a signed m.me ref (400 days)
    P:mid:{page}:{mid}      string  a Messenger message id already recorded: webhook retries
                                    and replays of it are ignored (1 day)
    P:tpl:{page}            hash    the page's utility templates, "{name}|{language}" -> JSON
                                    (status, parameters, buttons; worker/templates)
    P:tpl:synced            zset    page -> when its template catalogue was last read from Graph
    P:tpl:lock              string  the periodic catalogue sync's turn (TEMPLATE_SYNC_SECONDS TTL)
    P:pwait:{page}          zset    deliveries waiting for their page (paused, throttled, token,
                                    restricted) -> due: a resume releases them without a scan
    P:twait:{page}:{name}|{language}
                            zset    deliveries waiting on a utility template Meta paused (as
                                    the catalogue names it) -> due: the catalogue reading it
                                    APPROVED again (a status event, a sync) releases them
                                    (worker/templates/waits.py)
    P:pause:{page}          hash    page pause: until, reason, code, token fingerprint, probe
    P:paused                zset    paused pages -> until
    P:moved                 hash    pages `shards move` brought here -> "{shard}:{until}": until
                                    then the intake asks that shard too whether it remembers a
                                    request's Idempotency-Key (worker/store/pagemove.py)
    P:rl:{page}:{class}     hash    the page's GCRA bucket (worker/ratelimit.py)
    P:rl:r:{page}:{psid}    hash    a recipient's bucket (RECIPIENT_RATE_LIMIT)
    P:rl:usage              hash    page -> "{percent}:{epoch s}": Graph's last usage header
                                    (X-Business-Use-Case-Usage; written at most every 5 s)
    P:rl:used               zset    "{page}:{class}" -> its last use (status; pruned after a day)
    P:stats:{minute}:{st}   string  final outcomes per minute (status rates; 1 h TTL)
    P:stats:{minute}:reasons hash   failed/dead/expired outcomes per "{status}:{reason}", and
                                    possible duplicates, per minute (the console; 1 h TTL)
    P:camp:{id}             hash    a campaign's (or Canvas's) counters: accepted, sent, failed,
                                    failed:{reason}, expired, dead, cancelled, delivered, read,
                                    replayed, sent_after_stop; first_at, last_at, kind, stopped_at,
                                    stopped_by (CAMPAIGN_RETENTION, refreshed on activity)
    P:campopen:{id}         zset    the campaign's open deliveries -> accepted at (what a stop
                                    cancels; members leave as they end; CAMPAIGN_RETENTION)
    P:camps                 zset    campaigns -> last activity (``campaigns list``; pruned by
                                    CAMPAIGN_RETENTION)
    P:campstop              zset    stopped campaigns -> the stop's time, moved on to the
                                    campaign's last activity once older than CAMPAIGN_RETENTION
                                    (the stop's own time is `stopped_at` in P:camp:{id}; claim.lua,
                                    accept.lua and the workers read it; resume removes; gone with
                                    the campaign's last activity, CAMPAIGN_RETENTION after it)
    P:u:{window}:{suffix}   hash    per recipient, 8 raw bytes of a digest of "{page}:{psid}"
                                    (before: its hex, and before that the text) -> its sent
                                    deliveries not yet read: 20 bytes each, the id's raw bytes and
                                    its outcome's hour (delivery receipts by mid and by watermark,
                                    read watermarks); window = ⌊sent time / RECORD_RETENTION⌋,
                                    expires at the end of the next (worker/store/unread.py)
    P:u:meta                hash    fields, raw: when digest fields and raw ones first ran (the
                                    fields written before are read for two windows after); ttl:
                                    the RECORD_RETENTION the windows
                                    above are numbered by;
                                    before, changed: the one before a change and when (its windows
                                    are read while they live)
    P:unread:{page}:{psid}  zset    before buckets: the same as one set per recipient -> sent at
                                    (read and trimmed by the receipts, never written; expires)
    P:braze:outbox … :lock          the Braze outbox (worker/braze/outbox.py)
    {QUEUE_NAME}            list    the Celery queue (kombu's Redis layout); ``unacked`` is kombu's
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: kombu's Redis transport keeps delivered, unacknowledged messages in this hash (its default).
KOMBU_UNACKED = "unacked"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str
    queue: str

    @classmethod
    def of(cls, settings: Any) -> Keys:
        """The keys of a ``Settings`` (typed Any: the store does not import the config layer's
        classes at run time for this one attribute pair)."""
        return cls(settings.key_prefix, settings.queue_name)

    # --- deliveries -------------------------------------------------------------------------
    def delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}:d:{delivery_id}"

    @property
    def delivery_prefix(self) -> str:
        """For the Lua scripts that build ``P:d:{id}`` from ids."""
        return f"{self.prefix}:d:"

    @property
    def open(self) -> str:
        """The open deliveries' ages derive from this name (:attr:`open_counts`,
        :attr:`open_seconds`); before them it was a zset of every open delivery (read while it
        has members)."""
        return f"{self.prefix}:open"

    @property
    def open_counts(self) -> str:
        return f"{self.open}:n"

    @property
    def open_seconds(self) -> str:
        return f"{self.open}:s"

    @property
    def open_total(self) -> str:
        return f"{self.open}:c"

    @property
    def pending(self) -> str:
        return f"{self.prefix}:pending"

    @property
    def sched(self) -> str:
        return f"{self.prefix}:sched"

    @property
    def scheduler_tick(self) -> str:
        """The last scheduler tick's time: written every tick, so a Redis that refuses writes
        is noticed at once (release_due.lua)."""
        return f"{self.prefix}:sched:tick"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def parked(self) -> str:
        return f"{self.prefix}:parked"

    def park(self, page_id: str, psid: str) -> str:
        return f"{self.prefix}:park:{page_id}:{psid}"

    @property
    def park_prefix(self) -> str:
        return f"{self.prefix}:park:"

    def outcome(self, hour: int, suffix: str) -> str:
        """A bucket of final records (worker/store/outcomes.py): those that ended in that epoch
        hour whose id ends with ``suffix``."""
        return f"{self.prefix}:o:{hour}:{suffix}"

    @property
    def outcome_prefix(self) -> str:
        """What every outcome bucket's name starts with (``outcome(hour, suffix)``: the hour
        and the suffix after it)."""
        return f"{self.prefix}:o:"

    @property
    def outcome_meta(self) -> str:
        """When outcomes' fields first were raw ids on this shard (``raw``: the hour)."""
        return f"{self.prefix}:o:meta"

    def history(self, delivery_id: str) -> str:
        """A delivery's history (worker/delivery/recorder.py writes it, worker/lookup.py reads it)."""
        return f"{self.prefix}:hist:{delivery_id}"

    @property
    def history_prefix(self) -> str:
        return f"{self.prefix}:hist:"

    def idem(self, key: str) -> str:
        """An Idempotency-Key as the previous version kept it (a string of its own): read by
        accept.lua for one IDEMPOTENCY_TTL after the buckets first ran, never written."""
        return f"{self.prefix}:idem:{key}"

    @property
    def idem_meta(self) -> str:
        """What the idempotency buckets' windows are numbered by, and since when they and their
        raw fields ran (accept.lua: ``ARGV[4] .. 'meta'``)."""
        return f"{self.idem_bucket_prefix}meta"

    @property
    def idem_bucket_prefix(self) -> str:
        """Idempotency-Key buckets (worker/store/idempotency.py); ``meta`` after it: when they
        first ran, and the TTL their windows are numbered by."""
        return f"{self.prefix}:i:"

    # --- the queue ----------------------------------------------------------------------------
    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    @property
    def batch_prefix(self) -> str:
        return f"{self.prefix}:batch:"

    @staticmethod
    def batch_entry(batch_id: str) -> str:
        """A queued batch's member of ``pending`` (accept.lua writes it, sweep.lua reads it)."""
        return f"b:{batch_id}"

    @staticmethod
    def claim_entry(batch_id: str, token: str) -> str:
        """A claim of a batch: its member of ``pending`` (claim.lua writes it, sweep.lua reads it)."""
        return f"t:{batch_id}:{token}"

    def batch_taken(self, batch_id: str, token: str) -> str:
        """A batch list as taken by one claim: kept while the claim's entry in pending is, or
        briefly when it held nothing (so the claim can be sent again); sweep.lua builds the same
        name from :attr:`batch_prefix`."""
        return f"{self.prefix}:batch:{batch_id}:t:{token}"

    @property
    def gather(self) -> str:
        """The id of this queue's newest batch (accept.lua appends to it while it is queued)."""
        return f"{self.prefix}:gather:{self.queue}"

    @property
    def unacked(self) -> str:
        return KOMBU_UNACKED

    # --- recipients ---------------------------------------------------------------------------
    def suppressed(self, page_id: str, psid: str) -> str:
        return f"{self.prefix}:supp:{page_id}:{psid}"

    def tag_suppressed(self, page_id: str, psid: str) -> str:
        return f"{self.prefix}:supptag:{page_id}:{psid}"

    def window_closed(self, page_id: str, psid: str) -> str:
        """When Graph last answered that the window is closed (worker/delivery/inbound.py)."""
        return f"{self.prefix}:wcl:{page_id}:{psid}"

    def window(self, page_id: str, psid: str) -> str:
        """When the PSID's window closes (``wu``: the value changed meaning from ``win``'s)."""
        return f"{self.prefix}:wu:{page_id}:{psid}"

    def external(self, page_id: str, psid: str) -> str:
        return f"{self.prefix}:ext:{page_id}:{psid}"

    def inbound_mid(self, page_id: str, mid: str) -> str:
        """A webhook event's message id, once recorded (worker/delivery/inbound.py)."""
        return f"{self.prefix}:mid:{page_id}:{mid}"

    # --- pages --------------------------------------------------------------------------------
    def templates(self, page_id: str) -> str:
        return f"{self.prefix}:tpl:{page_id}"

    @property
    def templates_synced(self) -> str:
        return f"{self.prefix}:tpl:synced"

    @property
    def templates_lock(self) -> str:
        """Held (SET NX EX) by the worker whose turn it is to sync the catalogues (worker/templates/sync.py)."""
        return f"{self.prefix}:tpl:lock"

    def page_waits(self, page_id: str) -> str:
        """The deliveries waiting for their page (worker/delivery/recorder.py; store/pages.py)."""
        return f"{self.prefix}:pwait:{page_id}"

    def template_waits(self, page_id: str, template: str) -> str:
        """The deliveries waiting on one of the page's utility templates that Meta paused;
        ``template`` as the catalogue names it, ``"{name}|{language}"``
        (worker/templates/catalogue.py ``field_name``). Written by worker/delivery/recorder.py,
        released by worker/templates/waits.py. Named by the page like its other keys: in the
        page's shard."""
        return f"{self.prefix}:twait:{page_id}:{template}"

    def pause(self, page_id: str) -> str:
        return f"{self.prefix}:pause:{page_id}"

    @property
    def paused(self) -> str:
        return f"{self.prefix}:paused"

    @property
    def moved(self) -> str:
        """The pages moved to this shard and the shard each came from (worker/store/pagemove.py)."""
        return f"{self.prefix}:moved"

    def bucket(self, page_id: str, kind: str) -> str:
        return f"{self.prefix}:rl:{page_id}:{kind}"

    def bucket_of(self, member: str) -> str:
        """The bucket of a ``P:rl:used`` member (``{page}:{class}``)."""
        return f"{self.prefix}:rl:{member}"

    @staticmethod
    def page_of_used(member: str) -> str:
        """The page of a ``P:rl:used`` member (``{page}:{class}``)."""
        return member.rpartition(":")[0]

    @property
    def page_usage(self) -> str:
        """Each page's last usage percentage from Graph (worker/ratelimit.py; the console reads it)."""
        return f"{self.prefix}:rl:usage"

    def recipient_bucket(self, page_id: str, psid: str) -> str:
        return f"{self.prefix}:rl:r:{page_id}:{psid}"

    @property
    def buckets(self) -> str:
        """Buckets in use: "{page}:{class}" -> last use (epoch s). A zset, so that status reads
        the most recently used ones in one bounded call and old ones are pruned (the set that
        ``P:rl:pages`` was, before, only grew)."""
        return f"{self.prefix}:rl:used"

    # --- outcome counts -----------------------------------------------------------------------
    def stats(self, minute: int, status: str) -> str:
        return f"{self.prefix}:stats:{minute}:{status}"

    @property
    def stats_prefix(self) -> str:
        return f"{self.prefix}:stats:"

    # --- campaigns (worker/campaigns.py) ---------------------------------------------------------
    def campaign(self, campaign_id: str) -> str:
        return f"{self.prefix}:camp:{campaign_id}"

    @property
    def campaign_prefix(self) -> str:
        return f"{self.prefix}:camp:"

    def campaign_open(self, campaign_id: str) -> str:
        return f"{self.prefix}:campopen:{campaign_id}"

    @property
    def campaign_open_prefix(self) -> str:
        return f"{self.prefix}:campopen:"

    @property
    def campaigns(self) -> str:
        return f"{self.prefix}:camps"

    @property
    def campaigns_stopped(self) -> str:
        return f"{self.prefix}:campstop"

    # --- receipts ------------------------------------------------------------------------------
    def unread(self, page_id: str, psid: str) -> str:
        """The previous version's set of a recipient's sent, unread deliveries -> sent at (read
        and trimmed by the receipts, never written)."""
        return f"{self.prefix}:unread:{page_id}:{psid}"

    @property
    def unread_prefix(self) -> str:
        """The previous version's unread sets (read by the receipts, never written)."""
        return f"{self.prefix}:unread:"

    @property
    def unread_meta(self) -> str:
        """What the unread buckets' windows are numbered by, and since when their digest and raw
        fields ran (_unread.lua: ``prefix .. 'meta'``)."""
        return f"{self.unread_bucket_prefix}meta"

    @property
    def unread_bucket_prefix(self) -> str:
        """Recipients' unread deliveries, in buckets (worker/store/unread.py)."""
        return f"{self.prefix}:u:"

    # --- Braze --------------------------------------------------------------------------------
    @property
    def braze_outbox(self) -> str:
        return f"{self.prefix}:braze:outbox"

    @property
    def braze_inflight(self) -> str:
        return f"{self.prefix}:braze:inflight"

    @property
    def braze_retry_at(self) -> str:
        return f"{self.prefix}:braze:retry_at"

    @property
    def braze_failures(self) -> str:
        return f"{self.prefix}:braze:failures"

    @property
    def braze_invalid(self) -> str:
        return f"{self.prefix}:braze:invalid"

    @property
    def braze_lock(self) -> str:
        return f"{self.prefix}:braze:lock"


def text(value: Any) -> str:
    """A Redis reply (bytes) or an argument as str."""
    return value.decode() if isinstance(value, bytes) else str(value)
