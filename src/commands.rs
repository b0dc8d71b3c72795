//! The subcommands' runners: everything between the parsed command line and the library, with
//! the I/O of a command-line program (reading files, printing, exit codes). `main.rs` only
//! dispatches here.

use std::process::ExitCode;

use crate::claims::AssumePresent;
use crate::cli::{CertsArgs, CheckArgs, EnvsArgs, GcArgs, PreviewArgs, ServeArgs};
use crate::config::{Config, Overrides};
use crate::inject::Injector;
pub use crate::logging::init_logging;
use crate::server::ServeOptions;

mod image_store;
pub use image_store::publish;

/// The namespace nixuv runs in, from the downward API.
fn own_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty())
}

impl From<ServeArgs> for ServeOptions {
    /// The one place where `nixuv serve`'s flags become the server's options.
    fn from(a: ServeArgs) -> Self {
        ServeOptions {
            addr: a.addr,
            tls_cert: a.tls_cert.unwrap_or_default(),
            tls_key: a.tls_key.unwrap_or_default(),
            config_path: a.config,
            overrides: Overrides { init_image: a.init_image, own_namespace: own_namespace() },
            metrics_addr: a.metrics_addr,
            body_limit: a.body_limit,
            request_bytes_budget: a.request_bytes_budget_mib.saturating_mul(1024 * 1024),
            reload_interval: a.reload_interval,
            header_read_timeout: a.header_read_timeout,
            request_timeout: a.request_timeout,
            handshake_timeout: a.handshake_timeout,
            max_connections: a.max_connections.max(1),
            max_connections_per_client: a.max_connections_per_client.max(1),
            shutdown_delay: a.shutdown_delay,
            drain_timeout: a.drain_timeout,
            first_request_timeout: a.first_request_timeout,
            idle_timeout: a.idle_timeout,
            preview_concurrency: a.preview_concurrency,
            preview_threads: a.preview_threads,
            preview_body_limit: a.preview_body_limit,
            preview_on_metrics_addr: a.preview_on_metrics_addr,
            preview_max_output: a.preview_max_output,
            decision_cache_bytes: a.decision_cache_mib.saturating_mul(1024 * 1024),
            check_claims: a.check_claims,
            manage_stores: a.manage_stores,
            stores_only: a.stores_only,
            manage_ca_bundle: a.manage_ca_bundle,
            ca_bundle_file: a.ca_bundle_file,
        }
    }
}

/// `nixuv serve`, until SIGTERM.
pub fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.worker_threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    if a.manage_stores_once {
        return rt.block_on(manage_stores_once(a));
    }
    rt.block_on(crate::server::serve(ServeOptions::from(a)))?;
    Ok(ExitCode::SUCCESS)
}

/// `nixuv serve --manage-stores-once`: exit 0 when every selected namespace was reconciled
/// without an error, 1 otherwise.
async fn manage_stores_once(a: ServeArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let overrides = Overrides { init_image: a.init_image, own_namespace: own_namespace() };
    let config = Config::load_with(a.config.as_deref(), &overrides)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let summary = crate::server::manage_stores_once(client, &config, &crate::server::identity()).await?;
    let mut failed = false;
    for (ns, state) in &summary.namespaces {
        println!("{ns} {}", state.as_str());
        failed |= *state == crate::managed::StoreState::Error;
    }
    for ns in &summary.removed {
        println!("{ns} removed");
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `nixuv materialize`: exit 0 when the env is ready, 1 with the reason otherwise.
pub fn materialize() -> ExitCode {
    let start = std::time::Instant::now();
    match crate::materialize::run_from_env() {
        Ok(outcome) => {
            tracing::info!(outcome = ?outcome, elapsed_ms = start.elapsed().as_millis() as u64, "materialize done");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "materialize failed");
            eprintln!("nixuv materialize: {e}");
            if let Some(h) = crate::materialize::hint(&e) {
                eprintln!("nixuv materialize: {h}");
            }
            ExitCode::from(1)
        }
    }
}

/// `nixuv check`: exit 0 when nothing stands in the way, 1 when something does, 2 when the
/// cluster cannot be asked.
pub fn check(a: CheckArgs) -> ExitCode {
    use crate::check::{CheckOptions, Target};
    let target = match a.kind.as_str() {
        "pod" | "po" | "pods" => Target::Pod,
        "namespace" | "ns" => Target::Namespace,
        k => Target::Workload(k.trim_end_matches('s').to_string()),
    };
    let opts = CheckOptions {
        target,
        name: a.name,
        namespace: a.namespace,
        webhook: a.webhook,
        config_map: a.config_map,
        tls_secret: a.tls_secret,
        connect: a.connect,
        resolve: a.resolve,
    };
    let run = async {
        let client = kube::Client::try_default().await?;
        crate::check::check(&client, &opts).await
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nixuv check: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run) {
        Ok(report) => {
            if a.output == "json" {
                println!("{}", serde_json::to_string_pretty(&report).expect("a report serialises"));
            } else {
                print!("{}", report.text());
            }
            if report.failed() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("nixuv check: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// What `nixuv envs list|show ID` shows of `all` (named by `id_of`, found in `place`).
fn select_envs<T>(a: &EnvsArgs, all: Vec<T>, id_of: impl Fn(&T) -> &str, place: &str) -> anyhow::Result<Vec<T>> {
    match (a.action.as_str(), a.id.as_deref()) {
        ("list", _) => Ok(all),
        ("show", Some(id)) => {
            let one: Vec<T> = all.into_iter().filter(|e| id_of(e) == id).collect();
            anyhow::ensure!(!one.is_empty(), "no env {id} in {place}");
            Ok(one)
        }
        ("show", None) => anyhow::bail!("nixuv envs show needs an env id"),
        (other, _) => anyhow::bail!("nixuv envs: unknown action {other:?} (list or show)"),
    }
}

/// A string read from where anyone may have written it (a store, a NixuvEnv), for the terminal:
/// control characters escaped, so that no planted escape sequence reaches it.
fn safe(s: &str) -> String {
    match s.chars().any(char::is_control) {
        true => s.escape_debug().to_string(),
        false => s.to_string(),
    }
}

/// Runs `f` with a client of the Kubernetes API (kubeconfig or in-cluster config), on a runtime
/// of its own.
fn with_cluster<T, F>(f: impl FnOnce(kube::Client) -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    use anyhow::Context;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async { f(kube::Client::try_default().await.context("connecting to the Kubernetes API")?).await })
}

/// `nixuv envs list|show ID`.
pub fn envs(a: EnvsArgs) -> anyhow::Result<ExitCode> {
    if a.cluster {
        return image_store::envs_cluster(&a);
    }
    let layout = crate::materialize::layout::Layout::new(&a.uv_root, &a.nix_dir);
    anyhow::ensure!(
        layout.uv_root.is_dir(),
        "--uv-root {}: no such directory (is the volume mounted?)",
        layout.uv_root.display()
    );
    let all = crate::materialize::envs::list(&layout, a.lease_ttl)?;
    let shown = select_envs(&a, all, |e| e.id.as_str(), &layout.uv_root.display().to_string())?;
    if a.output == "json" {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    let when = |t: Option<u64>| {
        t.map(|t| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)).to_string()
        })
        .unwrap_or_else(|| "-".into())
    };
    // Markers are read from a store any Pod of the namespace can write: what they say reaches the
    // terminal with control characters escaped (no planted escape sequences).
    let safe_all = |v: &[String], sep: &str| v.iter().map(|x| safe(x)).collect::<Vec<_>>().join(sep);
    for e in &shown {
        let deps: Vec<String> = e.system.iter().chain(&e.python).map(|d| safe(d)).collect();
        println!(
            "{}  {:<10}  {:>10}  built {}  ({:.1}s)  last used {}{}{}",
            e.id,
            e.state,
            crate::imagestore::human_bytes(e.bytes),
            when(e.built_at_unix),
            e.build_seconds.unwrap_or(0.0),
            when(e.last_used_unix),
            e.holder.as_deref().map(|h| format!("  by {}", safe(h))).unwrap_or_default(),
            if deps.is_empty() || a.action == "show" { String::new() } else { format!("  {}", deps.join(" ")) }
        );
        if a.action == "show" {
            println!("  system: {}", safe_all(&e.system, " "));
            println!("  python {}: {}", safe(e.python_version.as_deref().unwrap_or("-")), safe_all(&e.python, ", "));
            if let Some(lock) = &e.lock {
                if let Some(i) = &lock.interpreter {
                    println!("  interpreter: {} at {}", safe(&i.version), safe(&i.home));
                }
                for d in &lock.python {
                    println!(
                        "    {}=={}  RECORD sha256:{}",
                        safe(&d.name),
                        safe(&d.version),
                        safe(d.record_sha256.as_deref().unwrap_or("-"))
                    );
                }
                for p in &lock.nix {
                    println!("    {}", safe(p));
                }
            }
        }
    }
    println!("(sizes count each file once per env; files hard-linked from the uv cache or the bytecode store are shared with it and with other envs)");
    Ok(ExitCode::SUCCESS)
}

/// `nixuv gc`.
pub fn gc(a: GcArgs) -> anyhow::Result<ExitCode> {
    if a.registry {
        return image_store::gc_registry(&a);
    }
    let layout = crate::materialize::layout::Layout::new(&a.uv_root, &a.nix_dir);
    let in_use = match &a.pods_namespace {
        None => {
            tracing::warn!("--pods-namespace not given: an env a long-running Pod still uses can be removed by age");
            Default::default()
        }
        Some(ns) => pods_envs(ns)?,
    };
    let opts = crate::materialize::gc::GcOptions {
        max_age: a.max_age,
        lease_ttl: a.lease_ttl,
        dry_run: a.dry_run,
        prune_stores: !a.no_prune,
        uv_cache_max: a.uv_cache_max_size.as_ref().map(crate::values::Quantity::bytes),
        in_use,
    };
    let r = crate::materialize::gc::gc(&layout, &opts)?;
    tracing::info!(
        removed = ?r.removed,
        in_use = ?r.in_use,
        kept = r.kept.len(),
        busy = ?r.skipped_busy,
        orphans_removed = r.orphans_removed,
        uv_cache_freed = r.cache.as_ref().map_or(0, |c| c.freed),
        uv_cache_before = r.cache.as_ref().map_or(0, |c| c.before),
        dry_run = a.dry_run,
        "gc done"
    );
    Ok(ExitCode::SUCCESS)
}

/// The envs the Pods of namespace `ns` that have not finished use; an error (so that gc removes
/// nothing) when the API cannot say.
fn pods_envs(ns: &str) -> anyhow::Result<std::collections::BTreeSet<String>> {
    use anyhow::Context;
    with_cluster(|client| async move {
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, ns);
        let list =
            pods.list(&Default::default()).await.with_context(|| format!("listing the Pods of namespace {ns}"))?;
        Ok(crate::imagegc::referenced(&list.items))
    })
    .context("gc --pods-namespace: the envs in use are not known, nothing removed")
}

/// `nixuv certs`.
pub fn certs(a: CertsArgs) -> anyhow::Result<ExitCode> {
    let g = crate::certs::generate(&a.dns_names, &a.ips, a.valid_days)?;
    crate::certs::write(&a.out_dir, &g)?;
    eprintln!("wrote {0}/ca.crt, {0}/tls.crt, {0}/tls.key; caBundle:", a.out_dir.display());
    println!("{}", g.ca_bundle());
    Ok(ExitCode::SUCCESS)
}

/// The files `-f` names: `-` and files as given, directories expanded to their `.yaml`, `.yml`
/// and `.json` files in name order (their subdirectories too with `recursive`).
fn manifest_files(args: &[String], recursive: bool) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for arg in args {
        let path = std::path::Path::new(arg);
        if arg == "-" || !path.is_dir() {
            out.push(arg.clone());
            continue;
        }
        let mut found = Vec::new();
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    if recursive {
                        stack.push(p);
                    }
                } else if p.extension().and_then(|x| x.to_str()).is_some_and(|x| matches!(x, "yaml" | "yml" | "json")) {
                    found.push(p.display().to_string());
                }
            }
        }
        if found.is_empty() {
            return Err(format!(
                "{arg}: no .yaml, .yml or .json files{}",
                if recursive { "" } else { " (use -R for subdirectories)" }
            ));
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// `nixuv preview`: exit 0 when everything is allowed, 1 when an object is denied, 2 when the
/// input or the flags are unusable, 3 with `--strict` when there is any warning.
pub fn preview(a: PreviewArgs) -> ExitCode {
    use crate::preview::{self, output::Output};
    use std::io::Read;
    let fail = |msg: String| {
        eprintln!("nixuv preview: {msg}");
        ExitCode::from(2)
    };
    let overrides = Overrides { init_image: a.init_image.clone(), own_namespace: own_namespace() };
    let injector = match Config::load_with(a.config.as_deref(), &overrides) {
        Ok(c) => Injector::new(c),
        Err(e) => return fail(e.to_string()),
    };
    let inputs = match manifest_files(&a.file, a.recursive) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let several = inputs.len() > 1;
    let mut all_docs = Vec::new();
    let mut all_previews = Vec::new();
    let mut first_format = None;
    for input in &inputs {
        let mut text = String::new();
        let read = if input == "-" {
            std::io::stdin().read_to_string(&mut text).map(|_| ())
        } else {
            std::fs::read_to_string(input).map(|t| text = t)
        };
        if let Err(e) = read {
            return fail(format!("reading {input}: {e}"));
        }
        match preview::preview_text(&text, a.namespace.as_deref(), &injector, &AssumePresent) {
            Ok((format, docs, previews)) => {
                first_format.get_or_insert(format);
                all_docs.push(docs);
                all_previews.push(previews);
            }
            Err(e) => return fail(format!("{input}: {e}")),
        }
    }
    let output = a.output.unwrap_or(match first_format.unwrap_or(preview::Format::Yaml) {
        preview::Format::Yaml => Output::Yaml,
        preview::Format::Json => Output::Json,
    });
    let rendered = match output {
        Output::Yaml => all_docs
            .iter()
            .zip(&all_previews)
            .map(|(d, p)| preview::output::yaml(d, p))
            .collect::<Vec<_>>()
            .join("---\n"),
        Output::Json if several => {
            let items: Vec<serde_json::Value> = all_docs
                .iter()
                .zip(&all_previews)
                .flat_map(|(d, p)| preview::output::documents_with_template_pods(d, p))
                .collect();
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            format!("{}\n", serde_json::to_string_pretty(&list).expect("serialises"))
        }
        Output::Json => preview::output::json(&all_docs[0], &all_previews[0]),
        Output::Patch if several => {
            let files: Vec<(&str, &[preview::ObjectPreview])> =
                inputs.iter().map(String::as_str).zip(all_previews.iter().map(Vec::as_slice)).collect();
            preview::output::patches_of_files(&files)
        }
        Output::Patch => preview::output::patches(&all_previews[0]),
        Output::Env => {
            let flat: Vec<_> = all_previews.iter().flatten().cloned().collect();
            match preview::output::env_objects(&flat, injector.config()) {
                Some(text) => text,
                None => return fail("-o env: the config has no imageStore (envs as images); use -o warm-job".into()),
            }
        }
        Output::WarmJob => {
            let flat: Vec<_> = all_previews.iter().flatten().cloned().collect();
            preview::output::warm_jobs(&flat, a.namespace.as_deref(), injector.config())
        }
    };
    let previews: Vec<_> = inputs
        .iter()
        .zip(&all_previews)
        .flat_map(|(input, ps)| ps.iter().map(move |p| (several.then_some(input.as_str()), p)))
        .collect();
    print!("{rendered}");
    let (mut denied, mut warned) = (false, false);
    if let Some(w) = injector.config().nixpkgs_warning() {
        warned = true;
        eprintln!("nixuv preview: warning: {w}");
    }
    for (file, p) in &previews {
        let label = match file {
            Some(f) => format!("{f}: {}", p.label()),
            None => p.label(),
        };
        let unpinned = if a.strict { p.unpinned_warnings() } else { Vec::new() };
        for w in p.warnings.iter().chain(&unpinned) {
            warned = true;
            eprintln!("nixuv preview: {label}: warning: {w}");
        }
        for n in &p.notes {
            eprintln!("nixuv preview: {label}: note: {n}");
        }
        if let Some(msg) = p.denial() {
            denied = true;
            eprintln!("nixuv preview: {label}: {msg}");
        }
    }
    if a.resolve {
        let work = std::env::temp_dir().join(format!("nixuv-resolve-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&work);
        let tools = crate::resolve::Tools::from_env();
        let mut seen = std::collections::BTreeSet::new();
        for (file, p) in &previews {
            let label = match file {
                Some(f) => format!("{f}: {}", p.label()),
                None => p.label(),
            };
            for plan in p.plans().into_iter().filter(|plan| seen.insert(plan.id)) {
                let report = crate::resolve::check(&plan, &tools, &work);
                for f in &report.findings {
                    denied = true;
                    eprintln!(
                        "nixuv preview: {label}: env {}: {:?} would fail: {}; fix: {}",
                        plan.id, f.item, f.problem, f.fix
                    );
                }
                for u in &report.unchecked {
                    eprintln!("nixuv preview: {label}: env {}: note: not checked: {u}", plan.id);
                }
                if report.findings.is_empty() && report.unchecked.is_empty() {
                    eprintln!("nixuv preview: {label}: env {}: resolves", plan.id);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&work);
    }
    if denied {
        ExitCode::from(1)
    } else if warned && a.strict {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}
