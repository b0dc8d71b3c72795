//! The names nixuv's contract is made of besides its keys ([`crate::keys`]): the volumes,
//! container and paths it adds, and the variables that carry an env to the init container. The
//! bottom layer: it depends on nothing in the crate, and everything else takes names from here.

pub const INIT_CONTAINER: &str = "nixuv-init";
pub const VOL_NIX: &str = "nixuv-nix";
pub const VOL_UV: &str = "nixuv-uv";
pub const VOL_TMP: &str = "nixuv-tmp";
/// The config's `caBundle` ConfigMap, mounted read-only in the init container (and the builder).
pub const VOL_CA: &str = "nixuv-ca";
/// Where the `nixuv-ca` volume is mounted, and the file its key is projected to.
pub const CA_MOUNT: &str = "/nixuv/ca";
pub const CA_FILE: &str = "/nixuv/ca/ca.crt";
/// The file name [`CA_FILE`] has in the volume (the projected item's path).
pub const CA_FILE_NAME: &str = "ca.crt";

/// Where the `nixuv-uv` volume is mounted, in the init container and in target containers alike
/// (venvs and their interpreter links are not relocatable).
pub const UV_ROOT: &str = "/nixuv/uv";
/// Where the `nixuv-nix` volume is mounted in target containers: store paths are absolute.
pub const NIX_MOUNT: &str = "/nix";
/// The init container's scratch directory (an emptyDir): HOME, TMPDIR and nix-portable's
/// `NP_LOCATION`.
pub const WORK_DIR: &str = "/nixuv/work";
/// Where the `nixuv-nix` volume is mounted in the init container: nix-portable keeps its store at
/// `$NP_LOCATION/.nix-portable/nix/store`, so this is the volume's root seen through nix-portable.
pub const INIT_NIX_DIR: &str = "/nixuv/work/.nix-portable/nix";

/// The variables that carry an env to the init container (see [`crate::envspec`]).
pub const ENV_ID: &str = "NIXUV_ENV";
pub const ENV_SYSTEM_DEPS: &str = "NIXUV_SYSTEM_DEPS";
pub const ENV_PYTHON_DEPS: &str = "NIXUV_PYTHON_DEPS";
pub const ENV_PYTHON: &str = "NIXUV_PYTHON";
pub const ENV_NIXPKGS: &str = "NIXUV_NIXPKGS";
pub const ENV_INDEX_URL: &str = "NIXUV_INDEX_URL";
pub const ENV_UV_ROOT: &str = "NIXUV_UV_ROOT";
pub const ENV_NIX_DIR: &str = "NIXUV_NIX_DIR";
/// The names of the tool variables (`initEnv`) the env id binds, comma-separated; set only when
/// there are some. Any other tool variable is stripped from the tools' environment.
pub const ENV_TOOL_ENV: &str = "NIXUV_TOOL_ENV";
/// `allowed` when uv may build from source distributions; absent: wheels only.
pub const ENV_SOURCE_BUILDS: &str = "NIXUV_SOURCE_BUILDS";
/// `python.excludeNewer`, when set.
pub const ENV_EXCLUDE_NEWER: &str = "NIXUV_EXCLUDE_NEWER";
/// The tool variables the kubelet takes from a Secret, as `NAME=secret/key`, comma-separated;
/// set only when there are some. Their values are not read into the env id, only the references.
pub const ENV_SECRET_ENV: &str = "NIXUV_SECRET_ENV";
/// The config's `caBundle` as `configmap/key`, when set: part of the env id (the reference, not
/// the certificates: a CA changes whether a download is trusted, never what it holds).
pub const ENV_CA_BUNDLE: &str = "NIXUV_CA_BUNDLE";
/// Where the init container reads the `caBundle` certificates ([`CA_FILE`]); set with
/// [`ENV_CA_BUNDLE`].
pub const ENV_CA_FILE: &str = "NIXUV_CA_FILE";
/// `overlay` when the Python deps go into a PYTHONPATH directory; absent: a venv.
pub const ENV_PYTHON_MODE: &str = "NIXUV_PYTHON_MODE";
/// Where the init image keeps the interpreters it carries, with uv's download list for them
/// (`downloads.json`, `file://` URLs): used unless the admin names another list or a mirror.
pub const IMAGE_PYTHON_DOWNLOADS: &str = "/opt/nixuv/python/downloads.json";
/// The environment variables that nixuv itself sets on the init container.
pub const RESERVED_INIT_ENV_PREFIX: &str = "NIXUV_";
