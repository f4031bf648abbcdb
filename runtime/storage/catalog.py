"""Organizations, API keys, blueprints and channels: what researchers set up before any run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select, update

from runtime.errors import Conflict, NotFound
from runtime.ids import hash_secret, new_api_key, new_id
from runtime.serialize import blueprint_content_json, channel_settings_json
from runtime.storage import schema as t
from runtime.storage.database import Database, Transaction
from runtime.types import (
    JSON,
    Blueprint,
    BlueprintContent,
    BlueprintStatus,
    Channel,
    ChannelSettings,
    ChannelType,
    InboundCalls,
    InterviewerSettings,
    InterviewerType,
    Question,
)


def _channel_settings(stored: dict[str, Any]) -> ChannelSettings:
    """Settings as stored (JSON): unknown keys (of a newer server) ignored, lists and enums typed again."""
    values = {k: v for k, v in stored.items() if k in ChannelSettings.__dataclass_fields__}
    if "phone_numbers" in values:
        values["phone_numbers"] = tuple(values["phone_numbers"])
    if "inbound" in values:
        values["inbound"] = InboundCalls(values["inbound"])
    return ChannelSettings(**values)


def content_from_json(d: JSON) -> BlueprintContent:
    """A stored guide version (older versions lack the later fields: their defaults apply)."""
    who = d.get("interviewer") or {}
    return BlueprintContent(
        name=d["name"],
        greeting=d["greeting"],
        questions=tuple(
            Question(
                q["id"],
                q["text"],
                tuple(q.get("probes", ())),
                q.get("max_probes", 1),
                objective=q.get("objective"),
                verbatim=q.get("verbatim", True),
                probe_instructions=q.get("probe_instructions"),
            )
            for q in d["questions"]
        ),
        closing=d["closing"],
        language=d.get("language", "en"),
        interviewer=InterviewerSettings(
            type=InterviewerType(who.get("type", InterviewerType.SCRIPTED.value)),
            model=who.get("model"),
            instructions=who.get("instructions"),
            avoid=tuple(who.get("avoid", ())),
            temperature=float(who.get("temperature", 0.3)),
            prompt_version=who.get("prompt_version"),
        ),
        result_schema=d.get("result_schema"),
    )


@dataclass(frozen=True)
class Organization:
    id: str
    name: str
    created_at: float
    api_keys: int
    retention_days: int | None = None


def _channel(row: Any) -> Channel:
    s = row.settings
    return Channel(
        id=row.id,
        org_id=row.org_id,
        type=ChannelType(row.type),
        name=row.name,
        settings=_channel_settings(s),
        metadata=row.metadata,
        created_at=row.created_at,
    )


class Catalog:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Published blueprint versions and channels never change: every join would read them again.
        self._pinned: dict[tuple[str, str, int], BlueprintContent] = {}
        self._channels: dict[tuple[str, str], Channel] = {}

    async def pinned_content(self, org_id: str, bp_id: str, version: int) -> BlueprintContent:
        """A published (frozen) version's content; cached."""
        key = (org_id, bp_id, version)
        if key not in self._pinned:
            bp = await self.get_blueprint(org_id, bp_id, version)
            if bp.status is not BlueprintStatus.PUBLISHED:
                return bp.content  # a draft can still change: not cached
            self._pinned[key] = bp.content
        return self._pinned[key]

    # --- organizations and keys ---------------------------------------------------

    async def create_organization(self, name: str) -> str:
        org_id = new_id("organization")

        def write(tx: Transaction) -> None:
            tx.conn.execute(t.organizations.insert().values(id=org_id, name=name, created_at=time.time()))

        await self.db.write(write)
        return org_id

    async def list_organizations(self) -> list[Organization]:
        """Every organization, oldest first, with how many API keys each has."""
        keys = select(t.api_keys.c.org_id, func.count().label("n")).group_by(t.api_keys.c.org_id).subquery()
        query = (
            select(t.organizations, func.coalesce(keys.c.n, 0).label("keys"))
            .outerjoin(keys, keys.c.org_id == t.organizations.c.id)
            .order_by(t.organizations.c.created_at, t.organizations.c.id)
        )
        async with self.db.read() as conn:
            rows = list(await conn.execute(query))
        return [Organization(r.id, r.name, r.created_at, r.keys, r.retention_days) for r in rows]

    async def find_organization(self, id_or_name: str) -> Organization | None:
        """An organization by id, or by name if exactly one has it."""
        orgs = await self.list_organizations()
        by_id = [o for o in orgs if o.id == id_or_name]
        if by_id:
            return by_id[0]
        by_name = [o for o in orgs if o.name == id_or_name]
        return by_name[0] if len(by_name) == 1 else None

    async def create_api_key(self, org_id: str) -> str:
        """Create a key and return the secret; only its hash is stored."""
        secret = new_api_key()

        def write(tx: Transaction) -> None:
            tx.conn.execute(
                t.api_keys.insert().values(
                    id=new_id("api_key"),
                    org_id=org_id,
                    key_hash=hash_secret(secret),
                    hint=secret[-4:],
                    created_at=time.time(),
                )
            )

        await self.db.write(write)
        return secret

    async def key_for(self, secret: str) -> tuple[str, str] | None:
        """(organization id, key id) of an API key, if it is one."""
        rows = await self.db.fetch("SELECT org_id, id FROM api_keys WHERE key_hash = ?", (hash_secret(secret),))
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    async def org_for_key(self, secret: str) -> str | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(t.api_keys.c.org_id).where(t.api_keys.c.key_hash == hash_secret(secret)))
            ).first()
        return None if row is None else str(row.org_id)

    async def get_setting(self, key: str) -> Any:
        async with self.db.read() as conn:
            row = (await conn.execute(select(t.settings_kv.c.value).where(t.settings_kv.c.key == key))).first()
        return None if row is None else row.value

    async def set_setting(self, key: str, value: Any) -> None:
        def write(tx: Transaction) -> None:
            tx.conn.execute(t.settings_kv.delete().where(t.settings_kv.c.key == key))
            tx.conn.execute(t.settings_kv.insert().values(key=key, value=value))

        await self.db.write(write)

    # --- blueprints -----------------------------------------------------------------

    async def create_blueprint(self, org_id: str, content: BlueprintContent) -> Blueprint:
        now = time.time()
        bp_id = new_id("blueprint", now=now)

        def write(tx: Transaction) -> None:
            tx.conn.execute(
                t.blueprints.insert().values(
                    id=bp_id, org_id=org_id, latest_version=1, published_version=None, created_at=now, updated_at=now
                )
            )
            tx.conn.execute(
                t.blueprint_versions.insert().values(
                    blueprint_id=bp_id,
                    version=1,
                    status=BlueprintStatus.DRAFT.value,
                    content=blueprint_content_json(content),
                    created_at=now,
                )
            )

        await self.db.write(write)
        return await self.get_blueprint(org_id, bp_id)

    async def update_blueprint(self, org_id: str, bp_id: str, content: BlueprintContent) -> Blueprint:
        """Edit the draft; if the latest version is published, start a new draft version."""
        bp = await self.get_blueprint(org_id, bp_id)
        now = time.time()

        def write(tx: Transaction) -> None:
            if bp.status is BlueprintStatus.DRAFT:
                tx.conn.execute(
                    update(t.blueprint_versions)
                    .where(
                        and_(t.blueprint_versions.c.blueprint_id == bp_id, t.blueprint_versions.c.version == bp.version)
                    )
                    .values(content=blueprint_content_json(content))
                )
            else:
                tx.conn.execute(
                    t.blueprint_versions.insert().values(
                        blueprint_id=bp_id,
                        version=bp.version + 1,
                        status=BlueprintStatus.DRAFT.value,
                        content=blueprint_content_json(content),
                        created_at=now,
                    )
                )
                tx.conn.execute(
                    update(t.blueprints).where(t.blueprints.c.id == bp_id).values(latest_version=bp.version + 1)
                )
            tx.conn.execute(update(t.blueprints).where(t.blueprints.c.id == bp_id).values(updated_at=now))

        await self.db.write(write)
        return await self.get_blueprint(org_id, bp_id)

    async def publish_blueprint(
        self, org_id: str, bp_id: str, *, freeze: Callable[[BlueprintContent], BlueprintContent] | None = None
    ) -> Blueprint:
        """Freeze the latest version (``freeze`` resolves what must not change later, e.g. the model).

        Publishing an already published version is a no-op.
        """
        bp = await self.get_blueprint(org_id, bp_id)
        if bp.status is BlueprintStatus.PUBLISHED:
            return bp
        now = time.time()
        content = freeze(bp.content) if freeze is not None else bp.content

        def write(tx: Transaction) -> None:
            tx.conn.execute(
                update(t.blueprint_versions)
                .where(and_(t.blueprint_versions.c.blueprint_id == bp_id, t.blueprint_versions.c.version == bp.version))
                .values(
                    status=BlueprintStatus.PUBLISHED.value, published_at=now, content=blueprint_content_json(content)
                )
            )
            tx.conn.execute(
                update(t.blueprints)
                .where(t.blueprints.c.id == bp_id)
                .values(published_version=bp.version, updated_at=now)
            )

        await self.db.write(write)
        return await self.get_blueprint(org_id, bp_id)

    async def get_blueprint(self, org_id: str, bp_id: str, version: int | None = None) -> Blueprint:
        async with self.db.read() as conn:
            head = (
                await conn.execute(
                    select(t.blueprints).where(and_(t.blueprints.c.id == bp_id, t.blueprints.c.org_id == org_id))
                )
            ).first()
            if head is None:
                raise NotFound(f"No blueprint {bp_id!r}", param="id")
            wanted = head.latest_version if version is None else version
            row = (
                await conn.execute(
                    select(t.blueprint_versions).where(
                        and_(t.blueprint_versions.c.blueprint_id == bp_id, t.blueprint_versions.c.version == wanted)
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"Blueprint {bp_id!r} has no version {wanted}", param="version")
        return Blueprint(
            id=head.id,
            org_id=head.org_id,
            version=row.version,
            status=BlueprintStatus(row.status),
            published_version=head.published_version,
            content=content_from_json(row.content),
            created_at=head.created_at,
            updated_at=head.updated_at,
        )

    async def published_content(self, org_id: str, bp_id: str) -> tuple[int, BlueprintContent]:
        bp = await self.get_blueprint(org_id, bp_id)
        if bp.published_version is None:
            raise Conflict(f"Blueprint {bp_id!r} has no published version; publish it first", param="blueprint_id")
        pinned = await self.get_blueprint(org_id, bp_id, bp.published_version)
        return pinned.version, pinned.content

    async def list_blueprints(self, org_id: str, *, limit: int, starting_after: str | None) -> tuple[list[str], bool]:
        query = select(t.blueprints.c.id).where(t.blueprints.c.org_id == org_id)
        if starting_after:
            query = query.where(t.blueprints.c.id < starting_after)
        async with self.db.read() as conn:
            ids = [r.id for r in await conn.execute(query.order_by(t.blueprints.c.id.desc()).limit(limit + 1))]
        return ids[:limit], len(ids) > limit

    # --- channels ---------------------------------------------------------------------

    async def create_channel(
        self, org_id: str, *, type: ChannelType, name: str, settings: ChannelSettings, metadata: JSON
    ) -> Channel:
        now = time.time()
        ch = Channel(new_id("channel", now=now), org_id, type, name, settings, metadata, now)

        def write(tx: Transaction) -> None:
            if settings.phone_numbers:  # a number reaches one channel: an incoming call must find its run
                rows = tx.conn.execute(select(t.channels).where(t.channels.c.type == ChannelType.TELEPHONY.value))
                for other in rows:
                    taken = set(settings.phone_numbers) & set(other.settings.get("phone_numbers") or ())
                    if taken:
                        raise Conflict(
                            f"{sorted(taken)[0]} already belongs to another telephony channel", param="phone_numbers"
                        )
            tx.conn.execute(
                t.channels.insert().values(
                    id=ch.id,
                    org_id=org_id,
                    type=type.value,
                    name=name,
                    settings=channel_settings_json(settings),
                    metadata=metadata,
                    created_at=now,
                )
            )

        await self.db.write(write)
        return ch

    async def get_channel(self, org_id: str, channel_id: str) -> Channel:
        cached = self._channels.get((org_id, channel_id))
        if cached is not None:
            return cached
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(t.channels).where(and_(t.channels.c.id == channel_id, t.channels.c.org_id == org_id))
                )
            ).first()
        if row is None:
            raise NotFound(f"No channel {channel_id!r}", param="channel_id")
        channel = self._channels[(org_id, channel_id)] = _channel(row)
        return channel

    async def find_channel(self, channel_id: str) -> Channel | None:
        """A channel of any organization (a phone call's stream names its channel, not its organization)."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(t.channels).where(t.channels.c.id == channel_id))).first()
        return None if row is None else _channel(row)

    async def channel_for_number(self, number: str) -> Channel | None:
        """The telephony channel (of any organization) that ``number`` belongs to, if any."""
        query = select(t.channels).where(t.channels.c.type == ChannelType.TELEPHONY.value)
        async with self.db.read() as conn:
            rows = list(await conn.execute(query))
        for row in rows:
            if number in (row.settings.get("phone_numbers") or ()):
                return _channel(row)
        return None

    async def list_channels(self, org_id: str, *, limit: int, starting_after: str | None) -> tuple[list[Channel], bool]:
        query = select(t.channels).where(t.channels.c.org_id == org_id)
        if starting_after:
            query = query.where(t.channels.c.id < starting_after)
        async with self.db.read() as conn:
            rows = list(await conn.execute(query.order_by(t.channels.c.id.desc()).limit(limit + 1)))
        return [_channel(r) for r in rows[:limit]], len(rows) > limit
