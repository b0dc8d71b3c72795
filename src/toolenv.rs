//! Which variables of the init container's environment reach uv and nix, and so belong to an
//! env's identity (docs/materialize.md). Bottom layer: plain functions of names and values, used
//! by the config (which variables of `initEnv` are bound), the plan (the env id) and the
//! init container (what it recomputes and what it strips).

/// Which tool a variable of the init container's environment reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolScope {
    /// uv: `UV_*`.
    Python,
    /// nix-portable and nix: `NP_*`, `NIX_*`.
    System,
    /// Both: where they trust certificates and which proxy they use.
    Both,
}

/// The variables nixuv binds into the env id (and strips from the tools' environment unless the
/// webhook declared them): everything that can change what uv or nix fetch.
pub fn tool_scope(name: &str) -> Option<ToolScope> {
    if name.starts_with("UV_") {
        return Some(ToolScope::Python);
    }
    if name.starts_with("NP_") || name.starts_with("NIX_") {
        return Some(ToolScope::System);
    }
    const BOTH: &[&str] = &[
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    ];
    BOTH.iter().any(|b| b.eq_ignore_ascii_case(name)).then_some(ToolScope::Both)
}

/// Variables that `nixuv materialize` sets for the tools itself, from the store layout; an admin's
/// `initEnv` may not override them.
pub const FIXED_TOOL_ENV: &[&str] = &[
    "HOME",
    "TMPDIR",
    "UV_CACHE_DIR",
    "UV_PYTHON_INSTALL_DIR",
    "UV_LINK_MODE",
    "UV_NO_CONFIG",
    "NP_LOCATION",
    "VIRTUAL_ENV",
];

/// An index URL as it may enter the env id and reach uv: `http(s)://` or `file://`, no
/// whitespace or control characters (the id's canonical form is line-based).
pub fn valid_index_url(url: &str) -> bool {
    ["https://", "http://", "file://"].iter().any(|p| url.starts_with(p))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// uv's own default index, used when `initEnv` names none.
pub const DEFAULT_INDEX_URL: &str = "https://pypi.org/simple";

/// The index uv uses given the tool variables: `UV_DEFAULT_INDEX`, else `UV_INDEX_URL`, else
/// uv's default; without the `name=` uv lets `UV_DEFAULT_INDEX` carry (the name only says which
/// `UV_INDEX_<NAME>_*` credentials apply).
pub fn effective_index<'a>(tool_env: impl IntoIterator<Item = (&'a str, &'a str)> + Clone) -> String {
    ["UV_DEFAULT_INDEX", "UV_INDEX_URL"]
        .iter()
        .find_map(|k| {
            tool_env.clone().into_iter().find(|(n, _)| n == k).map(|(_, v)| without_index_name(v).to_string())
        })
        .unwrap_or_else(|| DEFAULT_INDEX_URL.into())
}

/// `name=https://…` gives `https://…`; a plain URL is returned as is.
fn without_index_name(v: &str) -> &str {
    match v.split_once('=') {
        Some((name, url))
            if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && url.contains("://") =>
        {
            url
        }
        _ => v,
    }
}
