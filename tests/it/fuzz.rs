//! Fuzzing with proptest (cargo-fuzz needs a nightly toolchain, which these machines do not
//! have): random and structure-aware inputs for AdmissionReview decoding + the whole core, the
//! dependency parsers, and the preview reader, seeded from the test fixtures. Properties: no
//! panic; a decision for every decodable review; a patch that applies to the object; previews
//! that parse or fail with an error naming a document. `make fuzz` runs many more cases
//! (FUZZ_CASES); crashes found become named regression cases in `regressions()`.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{json, Value};

use nixuv::claims::AssumePresent;
use nixuv::config::Config;
use nixuv::inject::Injector;
use nixuv::plan::deps;
use nixuv::{preview, review};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

fn seeds() -> Vec<Value> {
    let dir = crate::common::fixture_path("reviews");
    let mut v: Vec<Value> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    v.sort_by_key(|x| x.to_string());
    v
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,40}".prop_map(Value::String),
        prop::sample::select(vec![
            "true",
            "CREATE",
            "Pod",
            "v1",
            "pods",
            "nixuv.io/inject",
            "PATH",
            "nixuv-init",
            "/nix"
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z./~-]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a random path of `v` (walking `steps`) by `new`.
fn mutate(v: &mut Value, steps: &[usize], new: Value) {
    match steps.split_first() {
        Some((s, rest)) => match v {
            Value::Object(m) if !m.is_empty() => {
                let k = m.keys().nth(s % m.len()).unwrap().clone();
                mutate(m.get_mut(&k).unwrap(), rest, new)
            }
            Value::Array(a) if !a.is_empty() => {
                let n = a.len();
                mutate(&mut a[s % n], rest, new)
            }
            other => *other = new,
        },
        None => *v = new,
    }
}

fn check_review_bytes(bytes: &[u8], inj: &Injector) {
    if let Ok(r) = review::decode(bytes) {
        let d = inj.decide(&r.request, &AssumePresent);
        let out = review::respond(r.api_version, &r.request.uid, d.to_response());
        assert_eq!(out.response.uid, r.request.uid.as_str());
        if let (Some(p), Some(obj)) = (d.patch(), r.request.object) {
            let mut doc: Value = serde_json::from_str(obj.get()).unwrap();
            json_patch::patch(&mut doc, &p.to_patch().0).unwrap_or_else(|e| panic!("patch does not apply: {e}"));
            // The result is a fixed point.
            let again = inj.decide_pod(&serde_json::to_string(&doc).unwrap(), r.request.namespace.as_deref());
            assert!(again.patch().is_none(), "reinvocation patched again");
        }
        if let Some(denial) = d.denial() {
            let code = denial.kind.code();
            assert!(matches!(code, 400 | 403), "{code}");
            assert!(!denial.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn review_core_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_review_bytes(&bytes, &Injector::new(Config::default()));
    }

    #[test]
    fn review_core_mutated_fixtures(seed in 0usize..64, steps in prop::collection::vec(any::<usize>(), 0..8), new in any_json()) {
        let seeds = seeds();
        let mut v = seeds[seed % seeds.len()].clone();
        mutate(&mut v, &steps, new);
        check_review_bytes(&serde_json::to_vec(&v).unwrap(), &Injector::new(Config::default()));
    }

    #[test]
    fn review_core_truncated_fixtures(seed in 0usize..64, cut in any::<usize>()) {
        let seeds = seeds();
        let bytes = serde_json::to_vec(&seeds[seed % seeds.len()]).unwrap();
        check_review_bytes(&bytes[..cut % (bytes.len() + 1)], &Injector::new(Config::default()));
    }

    #[test]
    fn dependency_parsers(list in ".{0,200}", key in "[a-zA-Z0-9./_-]{0,40}", value in ".{0,40}", version in ".{0,8}") {
        let _ = deps::split_python(&list);
        for item in deps::split_python(&list) {
            if let Ok(d) = deps::parse_requirement(item, &deps::Source::Annotation("nixuv.io/python-deps")) {
                // What passes validation is safe to hand to uv: no option, URL, path or control char.
                prop_assert!(!d.requirement.starts_with('-'));
                prop_assert!(!d.requirement.contains("://"));
                prop_assert!(!d.requirement.chars().any(|c| c.is_control()));
            }
        }
        let ann = BTreeMap::from([
            ("nixuv.io/system-deps".to_string(), list.clone()),
            ("nixuv.io/python-deps".to_string(), list.clone()),
            ("nixuv.io/python".to_string(), version),
        ]);
        let labels = BTreeMap::from([(format!("system.nixuv.io/{key}"), value.clone()), (format!("python.nixuv.io/{key}"), value)]);
        if let Ok(d) = deps::declared(Some(&labels), Some(&ann)) {
            for s in &d.system {
                prop_assert!(deps::valid_attr_path(&s.attr));
            }
        }
    }

    #[test]
    fn preview_reader_random_text(text in ".{0,300}") {
        let _ = preview::preview_text(&text, None, &Injector::new(Config::default()), &AssumePresent);
    }

    #[test]
    fn preview_reader_mutated_manifests(which in 0usize..16, steps in prop::collection::vec(any::<usize>(), 0..8), new in any_json()) {
        let dir = crate::common::fixture_path("preview");
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        files.sort();
        let text = std::fs::read_to_string(&files[which % files.len()]).unwrap();
        let mut docs: Vec<Value> = match preview::parse(&text, preview::detect(&text)) {
            Ok(d) => d.into_iter().map(|d| d.value).collect(),
            Err(_) => return Ok(()),
        };
        let n = docs.len();
        mutate(&mut docs[which % n], &steps, new);
        let yaml: String = docs.iter().map(|d| serde_yaml_ng::to_string(d).unwrap()).collect::<Vec<_>>().join("---\n");
        match preview::preview_text(&yaml, Some("team-a"), &Injector::new(Config::default()), &AssumePresent) {
            Ok((_, docs, previews)) => {
                let _ = preview::output::yaml(&docs, &previews);
                let _ = preview::output::patches(&previews);
            }
            Err(e) => prop_assert!(e.to_string().starts_with("document "), "{e}"),
        }
    }
}

/// One edit of a Pod in the places nixuv reads, with values nixuv cares about: the keys of its
/// registry (and near misses), the per-Pod options, env variables and mounts it owns, its volume
/// and container names. Random values at random paths almost never get past the review's
/// envelope; these keep it valid and reach the core's rules.
#[derive(Debug, Clone)]
enum PodEdit {
    Annotation(String, String),
    Label(String, String),
    Env(usize, String, Option<String>),
    Mount(usize, String, String),
    Volume(String, Value),
    InitContainer(String, Option<String>),
    Container(String),
}

fn pod_edit() -> impl Strategy<Value = PodEdit> {
    let mut keys: Vec<String> = nixuv::keys::KEYS.iter().map(|k| k.name.to_string()).collect();
    keys.extend(
        ["nixuv.io/python-dep", "nixuv.io/injekt", "system.nixuv.io/jq", "python.nixuv.io/six"].map(String::from),
    );
    let values = prop::sample::select(vec![
        "",
        "true",
        "True",
        "gcc, jq",
        "rich, six>=1,<2",
        "numpy==1.26.4",
        "3.11",
        "3.9",
        "2.7",
        "overlay",
        "venv",
        "first",
        "afterSidecars",
        "last",
        "app",
        "app, sidecar",
        "web",
        "/opt/bin:/usr/bin",
        "bin",
        "x y $(z)",
        "pkg @ https://e.x/p.whl",
        "-e .",
        "1.0+cpu",
    ])
    .prop_map(String::from);
    let var =
        prop::sample::select(vec!["PATH", "PYTHONPATH", "VIRTUAL_ENV", "NIXUV_ENV", "HOME"]).prop_map(String::from);
    let path = prop::sample::select(vec!["/nix", "//nix/./store", "/nixuv/uv", "/nixuv", "/data", "/x/../nix"])
        .prop_map(String::from);
    let vol = prop::sample::select(vec!["nixuv-nix", "nixuv-uv", "nixuv-tmp", "data"]).prop_map(String::from);
    let source = prop::sample::select(vec![
        json!({"emptyDir": {}}),
        json!({"persistentVolumeClaim": {"claimName": "nixuv-uv-cache"}}),
        json!({"persistentVolumeClaim": {"claimName": "other"}}),
    ]);
    let keys = prop::sample::select(keys);
    prop_oneof![
        (keys.clone(), values.clone()).prop_map(|(k, v)| PodEdit::Annotation(k, v)),
        (keys, values.clone()).prop_map(|(k, v)| PodEdit::Label(k, v)),
        (0usize..3, var, prop::option::of(values)).prop_map(|(i, n, v)| PodEdit::Env(i, n, v)),
        (0usize..3, vol.clone(), path).prop_map(|(i, v, p)| PodEdit::Mount(i, v, p)),
        (vol, source).prop_map(|(n, s)| PodEdit::Volume(n, s)),
        (
            prop::sample::select(vec!["nixuv-init", "proxy", "setup"]).prop_map(String::from),
            prop::option::of(Just("Always".to_string()))
        )
            .prop_map(|(n, r)| PodEdit::InitContainer(n, r)),
        prop::sample::select(vec!["sidecar", "istio-proxy", "nixuv-init", "wait"])
            .prop_map(|n| PodEdit::Container(n.to_string())),
    ]
}

fn apply_edit(pod: &mut Value, edit: &PodEdit) {
    let containers = |pod: &mut Value| pod["spec"]["containers"].as_array_mut().map(|a| a.len()).unwrap_or(0);
    match edit {
        PodEdit::Annotation(k, v) => pod["metadata"]["annotations"][k] = json!(v),
        PodEdit::Label(k, v) => pod["metadata"]["labels"][k] = json!(v),
        PodEdit::Env(i, name, value) => {
            let n = containers(pod);
            let c = &mut pod["spec"]["containers"][i % n.max(1)];
            let e = match value {
                Some(v) => json!({"name": name, "value": v}),
                None => json!({"name": name, "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}),
            };
            match c["env"].as_array_mut() {
                Some(a) => a.push(e),
                None => c["env"] = json!([e]),
            }
        }
        PodEdit::Mount(i, vol, path) => {
            let n = containers(pod);
            let c = &mut pod["spec"]["containers"][i % n.max(1)];
            let m = json!({"name": vol, "mountPath": path});
            match c["volumeMounts"].as_array_mut() {
                Some(a) => a.push(m),
                None => c["volumeMounts"] = json!([m]),
            }
        }
        PodEdit::Volume(name, source) => {
            let mut v = source.clone();
            v["name"] = json!(name);
            match pod["spec"]["volumes"].as_array_mut() {
                Some(a) => a.push(v),
                None => pod["spec"]["volumes"] = json!([v]),
            }
        }
        PodEdit::InitContainer(name, restart) => {
            let mut c = json!({"name": name, "image": "busybox"});
            if let Some(r) = restart {
                c["restartPolicy"] = json!(r);
            }
            match pod["spec"]["initContainers"].as_array_mut() {
                Some(a) => a.push(c),
                None => pod["spec"]["initContainers"] = json!([c]),
            }
        }
        PodEdit::Container(name) => {
            if let Some(a) = pod["spec"]["containers"].as_array_mut() {
                a.push(json!({"name": name, "image": "x"}));
            }
        }
    }
}

/// An opted-in Pod CREATE review with `edits` applied to its Pod, and the decision on it.
fn edited_review(edits: &[PodEdit], inj: &Injector) -> (Vec<u8>, nixuv::inject::Outcome) {
    let mut r = seeds().into_iter().find(|v| v["request"]["object"]["metadata"]["name"] == "bare").unwrap();
    let pod = &mut r["request"]["object"];
    pod["metadata"]["labels"]["nixuv.io/inject"] = json!("true");
    pod["metadata"]["annotations"]["nixuv.io/python-deps"] = json!("rich");
    for e in edits {
        apply_edit(pod, e);
    }
    let bytes = serde_json::to_vec(&r).unwrap();
    let review = review::decode(&bytes).expect("the envelope stays valid");
    let d = inj.decide(&review.request, &AssumePresent);
    (bytes, d.outcome())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Pod-aware edits of a valid review: every one reaches the core (never skipped, never an
    /// unreadable Pod), and the usual properties hold (a patch that applies, a fixed point, a
    /// denial with a code and a message).
    #[test]
    fn review_core_pod_aware_edits(edits in prop::collection::vec(pod_edit(), 1..6)) {
        let inj = Injector::new(Config::default());
        let (bytes, outcome) = edited_review(&edits, &inj);
        prop_assert_ne!(outcome, nixuv::inject::Outcome::Skipped);
        check_review_bytes(&bytes, &inj);
    }
}

/// The Pod-aware edits reach every kind of decision, not only one: over a fixed run, each of
/// injected, denied and not-opted-in (a label edit) comes up.
#[test]
fn pod_aware_edits_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};
    use std::collections::BTreeSet;
    let inj = Injector::new(Config::default());
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig::default(),
        proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let strategy = prop::collection::vec(pod_edit(), 1..6);
    let mut seen = BTreeSet::new();
    for _ in 0..400 {
        let edits = strategy.new_tree(&mut runner).unwrap().current();
        seen.insert(edited_review(&edits, &inj).1.as_str());
    }
    for want in ["injected", "denied", "not_opted_in"] {
        assert!(seen.contains(want), "{want} never reached: {seen:?}");
    }
}

/// Inputs that once broke something, kept as regression cases.
#[test]
fn regressions() {
    let cfg = Injector::new(Config::default());
    // A review whose object is a JSON string rather than an object.
    let mut r = seeds()[0].clone();
    r["request"]["object"] = json!("a pod");
    check_review_bytes(&serde_json::to_vec(&r).unwrap(), &cfg);
    // An Argo template whose container is an array (found by preview_reader_mutated_manifests:
    // indexing it by "name" panicked).
    let wf = "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nmetadata: {name: w}\nspec:\n  templates:\n  - {name: t, container: []}\n";
    let err = preview::preview_text(wf, None, &cfg, &AssumePresent).unwrap_err();
    assert_eq!(err.to_string(), "document 1: spec.templates[0].container: must be an object");
    // A container given as an array, which serde would read by position: the patch built for it
    // did not apply (found by review_core_mutated_fixtures).
    let mut r = seeds().into_iter().find(|v| v["request"]["object"]["metadata"]["name"] == "bare").unwrap();
    r["request"]["object"]["spec"]["containers"] = json!([["app"]]);
    check_review_bytes(&serde_json::to_vec(&r).unwrap(), &cfg);
    // A sidecar (not a target) setting NIXUV_ENV itself: injected, then taken for a stale
    // injection and rewritten on reinvocation (found by review_core_pod_aware_edits). Now denied.
    let (bytes, outcome) =
        edited_review(&[PodEdit::Container("istio-proxy".into()), PodEdit::Env(1, "NIXUV_ENV".into(), None)], &cfg);
    assert_eq!(outcome, nixuv::inject::Outcome::Denied);
    check_review_bytes(&bytes, &cfg);
    // Unterminated quote in a marker.
    let _ = deps::split_python("a; python_version > '3");
}
