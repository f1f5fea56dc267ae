"""Configuration: one frozen Settings object built from defaults, the JSON file, env vars and --config.

Precedence, lowest first: built-in defaults, `<config dir>/config.json` (dir from --config-dir,
else CEDANA_CONFIG_DIR, else /etc/cedana), `CEDANA_<SECTION>_<KEY>` environment variables, then
the JSON given with `--config` for one call. Unknown keys are an error that names the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

DEFAULT_CONFIG_DIR = "/etc/cedana"
COMPRESSIONS = ("none", "tar", "gzip", "lz4", "zlib", "zstd")


@dataclass(frozen=True)
class CheckpointSettings:
    """The defaults of `dump process`: where a checkpoint goes, its archive format, its streams."""

    dir: str = "/tmp"
    compression: str = "none"
    streams: int = 0


@dataclass(frozen=True)
class DbSettings:
    """The catalog index; the job database and the other state files sit beside it."""

    path: str = "/var/lib/cedana/cedana.db"


@dataclass(frozen=True)
class CriuSettings:
    """Which CRIU binary runs, and whether a dump leaves the process running by default."""

    binary_path: str = ""
    leave_running: bool = False


@dataclass(frozen=True)
class MountSettings:
    """Where the daemon mounts the checkpoint store."""

    dir: str = "/mnt/cedana"


@dataclass(frozen=True)
class StoreSettings:
    """Where and how the checkpoint store keeps its chunks."""

    url: str = "/var/lib/cedana/store"
    codec: str = "auto"  # zstd, lz4, none; auto: lz4 for a local store, zstd for a bucket
    # When chunks are compressed: before they are stored ("off"), or, in a mount server, after the
    # checkpoint that wrote them is committed ("on"; a commit then waits for no compression).
    # auto: after the commit on a local store, before the upload on a bucket.
    compress_after_commit: str = "auto"
    chunk_size: int = 1 << 20
    # A bucket store (s3://, gs://) puts new chunks into pack objects of about this size (one
    # request per pack, not per chunk); 0 = an object per chunk. Local stores keep a file per chunk.
    pack_size: int = 4 << 20
    memory_limit: int = 256 << 20
    # Client-side encryption: auto = on for s3:// and gs:// stores, for local ones as the store was made.
    encrypt: str = "auto"
    # The store key ("" = store.key beside db.path, in the state dir); made 0600 for a new encrypted store.
    key_file: str = ""


@dataclass(frozen=True)
class SpoolSettings:
    """Where CRIU writes a dump into the mount before the store takes it (app/capture.py), and a
    `dump process` to an archive before it is compressed: a local filesystem, tmpfs by default;
    size 0 = what is free (on tmpfs: memory, less a reserve). dir "" = no spool: CRIU writes
    through the mount, or beside the archive."""

    dir: str = "/dev/shm/cedana-spool"
    size: int = 0
    # Cut and hash the pages images while CRIU still writes them (what the store lacks is written
    # once CRIU is done): a checkpoint that changed little is committed as soon as CRIU is done,
    # but reading the file CRIU appends to slows CRIU down while it holds the process frozen
    # (measured on 2 cores: 1.7-1.9x the frozen time without it), so it is off unless the commit
    # matters more than the freeze.
    follow: bool = False


@dataclass(frozen=True)
class CacheSettings:
    """The local cache of chunks read from the store."""

    dir: str = "/var/cache/cedana/chunks"
    size: int = 2 << 30


@dataclass(frozen=True)
class AwsSettings:
    """S3 credentials, region and endpoint (the AWS_* variables set them too)."""

    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""
    region: str = ""
    endpoint: str = ""


@dataclass(frozen=True)
class GcsSettings:
    """GCS project, credentials and endpoint (the Google variables set them too)."""

    project: str = ""
    credentials: str = ""
    endpoint: str = ""


@dataclass(frozen=True)
class JobSettings:
    """Where managed jobs' output goes."""

    log_dir: str = "/var/log"


@dataclass(frozen=True)
class LogSettings:
    """How much cedana logs."""

    level: str = "warning"


@dataclass(frozen=True)
class KubernetesSettings:
    """The kubelet's checkpoint archives: where they appear, and whether the daemon imports them."""

    checkpoint_dir: str = "/var/lib/kubelet/checkpoints"
    watch: bool = False
    watch_interval: int = 5


@dataclass(frozen=True)
class Settings:
    """Every setting of one call: a section each, the daemon's address and this host's name."""

    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    db: DbSettings = field(default_factory=DbSettings)
    criu: CriuSettings = field(default_factory=CriuSettings)
    mount: MountSettings = field(default_factory=MountSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    aws: AwsSettings = field(default_factory=AwsSettings)
    gcs: GcsSettings = field(default_factory=GcsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    job: JobSettings = field(default_factory=JobSettings)
    address: str = "/run/cedana.sock"
    # The name this machine goes by in manifests and job records ("" = the kernel's hostname).
    # Jobs recorded by another host show as `remote`; set it to tell apart two daemons on one host.
    host: str = ""


# One line per key for docs/config.md (generated: `make docs`; a test keeps it current).
KEY_HELP = {
    "address": "The daemon's control socket.",
    "host": "The name this machine goes by in manifests and job records (default: the hostname).",
    "checkpoint.dir": "Default parent directory (or s3:// / gs:// URL) of `dump process`.",
    "checkpoint.compression": "Default archive format of `dump process`: none, tar, gzip, lz4, zlib, zstd.",
    "checkpoint.streams": "Parallel transfer streams (0: automatic).",
    "db.path": "The catalog index (SQLite); the job database sits beside it.",
    "criu.binary_path": "The CRIU binary (default: found in PATH, /usr/local/sbin first).",
    "criu.leave_running": "Keep processes running after `dump process` by default.",
    "mount.dir": "Where the daemon mounts the checkpoint store.",
    "store.url": "Where the store keeps its chunks: a directory, s3://bucket/prefix or gs://bucket/prefix.",
    "store.codec": "Chunk compression: zstd, lz4 or none (auto: lz4 on a local store, zstd on a bucket).",
    "store.compress_after_commit": "Mount server: store new chunks plain and compress them once their checkpoint "
                                   "is committed (auto: on for a local store, off for a bucket).",
    "store.chunk_size": "Target chunk size in bytes (e.g. 1M).",
    "store.pack_size": "Size of the pack objects a bucket store (s3://, gs://) puts new chunks in (e.g. 4M); "
                       "0 = an object per chunk. Local stores keep a file per chunk.",
    "store.memory_limit": "Memory the store may use for chunks in flight (e.g. 256M).",
    "spool.dir": "Where CRIU writes a dump into the mount (or an archive's images) first; \"\": no spool.",
    "spool.size": "The most the spool may hold (0: what is free; on tmpfs, less 1 GiB of memory).",
    "spool.follow": "Hash pages images while CRIU writes them: a small change commits as CRIU ends, the freeze is longer.",
    "cache.dir": "Local cache of chunks read from the store.",
    "cache.size": "Size limit of the chunk cache (e.g. 2G).",
    "aws.access_key_id": "S3 access key (also AWS_ACCESS_KEY_ID).",
    "aws.secret_access_key": "S3 secret key (also AWS_SECRET_ACCESS_KEY).",
    "aws.session_token": "S3 session token (also AWS_SESSION_TOKEN).",
    "aws.region": "S3 region (also AWS_REGION, AWS_DEFAULT_REGION).",
    "aws.endpoint": "S3-compatible endpoint URL (also AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3).",
    "gcs.project": "GCS project (also GOOGLE_CLOUD_PROJECT).",
    "gcs.credentials": "GCS service account key file (also GOOGLE_APPLICATION_CREDENTIALS).",
    "gcs.endpoint": "GCS endpoint, e.g. an emulator (also STORAGE_EMULATOR_HOST).",
    "log.level": "debug, info, warning or error.",
    "job.log_dir": "Where managed jobs' output goes: <dir>/cedana-output-<JID>.log (`run process -o` overrides).",
}


@dataclass(frozen=True)
class KeyInfo:
    """One configuration key as the docs show it."""

    key: str
    type: str
    default: Any
    env: str
    help: str


def describe_keys() -> list[KeyInfo]:
    """Every key with its type, default, environment variable and description, in file order."""
    defaults = Settings()
    out = []
    for key in all_keys():
        section, _, name = key.partition(".")
        value = getattr(getattr(defaults, section), name) if name else getattr(defaults, section)
        out.append(KeyInfo(key, type(value).__name__, value, env_name(key), KEY_HELP.get(key, "")))
    return out


def host_name(settings: "Settings | None" = None) -> str:
    """The host name recorded in manifests and job records: config `host`, else the hostname."""
    import socket
    return (settings.host if settings is not None else "") or socket.gethostname()


def _section_classes() -> dict[str, type]:
    hints = {
        "checkpoint": CheckpointSettings, "db": DbSettings, "criu": CriuSettings,
        "mount": MountSettings, "store": StoreSettings, "cache": CacheSettings, "spool": SpoolSettings,
        "aws": AwsSettings, "gcs": GcsSettings, "log": LogSettings, "job": JobSettings,
        "kubernetes": KubernetesSettings,
    }
    return hints


def all_keys() -> list[str]:
    """Every dotted key the configuration accepts, e.g. 'checkpoint.dir'."""
    keys = ["address", "host"]
    for section, cls in _section_classes().items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"config key {key!r} must be true or false, not {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be an integer, not {value!r}")
        try:
            return parse_size(value) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r} must be an integer, not {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be a string, not {value!r}")
    return value


def parse_size(text: str) -> int:
    """'512M', '2GiB', '1048576' -> bytes."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    num, unit = (s[:-1], s[-1]) if s and s[-1] in "kmgt" else (s, "")
    return int(float(num) * units[unit])


def format_size(n: float, sep: str = " ") -> str:
    """Bytes for people, the inverse of parse_size: 512 B, 7.4 MiB (sep between number and unit)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f}{sep}{unit}" if unit == "B" else f"{value:.1f}{sep}{unit}"
        value /= 1024
    return f"{value:.1f}{sep}TiB"


def _flatten(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: configuration must be a JSON object")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            for sub, subval in value.items():
                flat[f"{key}.{sub}"] = subval
        else:
            flat[key] = value
    return flat


def _apply(values: dict[str, dict[str, Any]], flat: dict[str, Any], source: str) -> None:
    known = set(all_keys())
    for key, value in flat.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown config key {key!r}{_suggestion(key)}")
        section, _, name = key.partition(".")
        if not name:
            values.setdefault("", {})[section] = value
        else:
            values.setdefault(section, {})[name] = value


def _closest(word: str, known: list[str], cutoff: float) -> list[str]:
    """The known word nearest to `word`, if one is near enough: [it] or []. difflib is imported
    here, not with the config: only a misspelt key or variable needs it."""
    import difflib

    return difflib.get_close_matches(word, known, n=1, cutoff=cutoff)


def _suggestion(key: str) -> str:
    """' (did you mean 'aws.endpoint'?)' for a key close to a known one, else ''."""
    known = all_keys()
    close = _closest(key, known, 0.6)
    if not close:  # a known key with an extra word: aws.endpoint_url -> aws.endpoint
        close = [k for k in known if key.startswith(k + "_") or key.startswith(k + ".")][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


# CEDANA_* variables that are not config keys but are read elsewhere.
OTHER_ENV = ("CEDANA_CONFIG_DIR", "CEDANA_LOG_LEVEL")


def env_name(key: str) -> str:
    """The environment variable of a config key: checkpoint.dir -> CEDANA_CHECKPOINT_DIR."""
    return "CEDANA_" + key.replace(".", "_").upper()


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """CEDANA_* variables that set nothing, each with the nearest known name when there is one."""
    environ = os.environ if environ is None else environ
    known = [env_name(k) for k in all_keys()] + list(OTHER_ENV)
    out = []
    for name in sorted(n for n in environ if n.startswith("CEDANA_") and n not in known):
        close = _closest(name, known, 0.7)
        out.append(name + (f" (did you mean {close[0]}?)" if close else ""))
    return out


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    flat = {}
    for key in all_keys():
        env = env_name(key)
        if env in environ:
            flat[key] = environ[env]
    return flat


def _aws_env(environ: Mapping[str, str]) -> dict[str, Any]:
    names = {
        "AWS_ACCESS_KEY_ID": "aws.access_key_id", "AWS_SECRET_ACCESS_KEY": "aws.secret_access_key",
        "AWS_SESSION_TOKEN": "aws.session_token", "AWS_DEFAULT_REGION": "aws.region",
        "AWS_REGION": "aws.region", "AWS_ENDPOINT_URL": "aws.endpoint",
        "AWS_ENDPOINT_URL_S3": "aws.endpoint", "GOOGLE_APPLICATION_CREDENTIALS": "gcs.credentials",
        "STORAGE_EMULATOR_HOST": "gcs.endpoint", "GOOGLE_CLOUD_PROJECT": "gcs.project",
    }
    return {key: environ[env] for env, key in names.items() if environ.get(env)}


def override_keys(override_json: str | None) -> list[str]:
    """The dotted keys a --config JSON sets (it was validated when the settings were loaded)."""
    if not override_json:
        return []
    try:
        return sorted(_flatten(json.loads(override_json), "--config"))
    except (ValueError, ConfigError):
        return []


def config_dir(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(explicit or environ.get("CEDANA_CONFIG_DIR") or DEFAULT_CONFIG_DIR)


def load_settings(
    config_dir_path: str | None = None,
    override_json: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the Settings for one call; raises ConfigError naming the bad key or file."""
    environ = os.environ if environ is None else environ
    values: dict[str, dict[str, Any]] = {}
    _apply(values, _aws_env(environ), "environment")
    path = config_dir(config_dir_path, environ) / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    if data is not None:
        _apply(values, _flatten(data, str(path)), str(path))
    _apply(values, _env_values(environ), "environment")
    if override_json:
        try:
            data = json.loads(override_json)
        except ValueError as exc:
            raise ConfigError(f"--config: not valid JSON: {exc}") from None
        _apply(values, _flatten(data, "--config"), "--config")
    return _build(values)


def _build(values: dict[str, dict[str, Any]]) -> Settings:
    sections = {}
    for section, cls in _section_classes().items():
        defaults = cls()
        given = values.get(section, {})
        kwargs = {
            name: _coerce(f"{section}.{name}", val, getattr(defaults, name)) for name, val in given.items()
        }
        sections[section] = cls(**kwargs)
    top = values.get("", {})
    address = _coerce("address", top["address"], "") if "address" in top else Settings().address
    host = _coerce("host", top["host"], "") if "host" in top else ""
    settings = Settings(address=address, host=host, **sections)
    if settings.checkpoint.compression not in COMPRESSIONS:
        raise ConfigError(
            f"config key 'checkpoint.compression' must be one of {', '.join(COMPRESSIONS)},"
            f" not {settings.checkpoint.compression!r}"
        )
    return settings
