//! deploy/images and the release tooling, as far as they can be checked without a container
//! engine or a registry (neither is reachable here; docs/install.md says what only a real build
//! shows): the Dockerfiles' build args match deploy/images/versions.env, which the Makefile and
//! the release workflow pass; Renovate's patterns find every image and version there; the init
//! image refuses an architecture without a nix-portable checksum. `make lint` runs hadolint on the
//! Dockerfiles and actionlint on the workflows.

use std::collections::BTreeMap;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn versions() -> BTreeMap<String, String> {
    read("deploy/images/versions.env")
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// `ARG NAME[=default]` lines of a Dockerfile.
fn args(dockerfile: &str) -> BTreeMap<String, Option<String>> {
    read(dockerfile)
        .lines()
        .filter_map(|l| l.strip_prefix("ARG "))
        .map(|a| match a.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (a.to_string(), None),
        })
        .collect()
}

#[test]
fn dockerfiles_versions_makefile_and_workflow_agree() {
    let v = versions();
    let makefile = read("Makefile");
    let workflow = read(".github/workflows/release.yml");
    for df in ["deploy/images/Dockerfile.webhook", "deploy/images/Dockerfile.init"] {
        for (name, default) in args(df) {
            if name == "TARGETARCH" {
                continue;
            }
            let pinned = v.get(&name).unwrap_or_else(|| panic!("{df}: ARG {name} is not in versions.env"));
            if let Some(d) = default {
                // A default is a convenience for a bare `docker build`; it must not drift.
                let bare = pinned.split('@').next().unwrap();
                assert!(d == *pinned || d == bare, "{df}: ARG {name}={d} but versions.env has {pinned}");
            }
            assert!(makefile.contains(&format!("--build-arg {name}=$({name})")), "Makefile does not pass {name}");
            assert!(
                workflow.contains(&format!("{name}=${{{{ steps.versions.outputs.{name} }}}}")),
                "release workflow does not pass {name}"
            );
        }
    }
    // Every image reference is NAME:TAG, optionally @sha256:DIGEST.
    let image = regex::Regex::new(r"^[a-z0-9./-]+:[A-Za-z0-9._-]+(@sha256:[a-f0-9]{64})?$").unwrap();
    for (k, val) in v.iter().filter(|(k, _)| k.ends_with("_IMAGE")) {
        assert!(image.is_match(val), "{k}={val}");
    }
}

#[test]
fn renovate_finds_every_pinned_version() {
    let cfg: serde_json::Value = serde_json::from_str(&read("renovate.json")).unwrap();
    let text = read("deploy/images/versions.env");
    let mut found = Vec::new();
    for m in cfg["customManagers"].as_array().unwrap() {
        for p in m["matchStrings"].as_array().unwrap() {
            // Renovate's patterns are JavaScript regexes; these use only syntax both engines share.
            let re = regex::Regex::new(p.as_str().unwrap()).unwrap();
            for c in re.captures_iter(&text) {
                let dep = c
                    .name("depName")
                    .map(|d| d.as_str().to_string())
                    .or_else(|| m["depNameTemplate"].as_str().map(String::from));
                found.push((dep.unwrap(), c["currentValue"].to_string()));
            }
        }
    }
    let v = versions();
    for (k, val) in v.iter().filter(|(k, _)| k.ends_with("_IMAGE")) {
        let (name, tag) = val.split('@').next().unwrap().rsplit_once(':').unwrap();
        assert!(found.contains(&(name.to_string(), tag.to_string())), "Renovate misses {k}={val}: {found:?}");
    }
    assert!(found.contains(&("DavHau/nix-portable".to_string(), v["NIX_PORTABLE_VERSION"].clone())), "{found:?}");
    // The same pattern also reads a line once Renovate has pinned its digest.
    let re = regex::Regex::new(cfg["customManagers"][0]["matchStrings"][0].as_str().unwrap()).unwrap();
    let pinned = format!("RUST_IMAGE=rust:1.95-bookworm@sha256:{}\n", "a".repeat(64));
    let c = re.captures(&pinned).unwrap();
    assert_eq!(
        (&c["depName"], &c["currentValue"], &c["currentDigest"][7..]),
        ("rust", "1.95-bookworm", "a".repeat(64).as_str())
    );
}

#[test]
fn the_init_image_refuses_an_architecture_without_a_checksum() {
    let df = read("deploy/images/Dockerfile.init");
    for (arch, upstream) in [("AMD64", "x86_64"), ("ARM64", "aarch64")] {
        let var = format!("NIX_PORTABLE_SHA256_{arch}");
        let stage = format!("AS nix-portable-{}", arch.to_lowercase());
        let at = df.find(&stage).unwrap_or_else(|| panic!("no stage {stage}"));
        let body = &df[at..df[at..].find("\nFROM ").map(|e| at + e).unwrap_or(df.len())];
        assert!(body.contains(&format!("test -n \"${{{var}}}\"")), "{stage} checks {var}");
        assert!(body.contains(&format!("--checksum=sha256:${{{var}}}")), "{stage} verifies against {var}");
        assert!(body.contains(&format!("nix-portable-{upstream} ")), "{stage} fetches the {upstream} asset");
    }
    assert!(df.contains("FROM nix-portable-${TARGETARCH} AS nix-portable"));
    // And `make image` refuses before calling a builder.
    let out = std::process::Command::new("make")
        .args(["-s", "image", "BUILDER=/bin/true", "ARCH=arm64", "NIX_PORTABLE_SHA256_ARM64="])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no nix-portable checksum for arm64"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Both images ship the binary stripped by deploy/images/strip.sh, which keeps the debug info
/// apart (the `debug` stage, a release artifact): run here on this build's binary, the stripped
/// one runs, has no DWARF and names its debug file; the debug file has the DWARF.
#[test]
fn images_ship_a_stripped_binary_and_keep_its_debug_info_apart() {
    for df in ["deploy/images/Dockerfile.webhook", "deploy/images/Dockerfile.init"] {
        let text = read(df);
        assert!(text.contains("strip.sh target/release/nixuv /nixuv /nixuv.debug"), "{df}");
        assert!(text.contains("COPY --from=build /nixuv /usr/local/bin/nixuv"), "{df} ships the stripped binary");
        assert!(!text.contains("/src/target/release/nixuv /usr/local/bin"), "{df} ships the unstripped binary");
        assert!(text.contains("FROM scratch AS debug"), "{df}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, debug) = (dir.path().join("nixuv"), dir.path().join("nixuv.debug"));
    let status = std::process::Command::new(root().join("deploy/images/strip.sh"))
        .arg(crate::common::bin())
        .arg(&out)
        .arg(&debug)
        .status()
        .expect("objcopy (binutils)");
    assert!(status.success());
    let sections = |f: &Path| {
        let o = std::process::Command::new("readelf").arg("-S").arg(f).output().expect("readelf (binutils)");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let (shipped, kept) = (sections(&out), sections(&debug));
    assert!(!shipped.contains(".debug_info") && shipped.contains(".gnu_debuglink"), "{shipped}");
    assert!(kept.contains(".debug_info"), "{kept}");
    let v = std::process::Command::new(&out).arg("--version").output().unwrap();
    assert!(v.status.success() && String::from_utf8_lossy(&v.stdout).starts_with("nixuv "));
    let size = |f: &Path| std::fs::metadata(f).unwrap().len();
    eprintln!(
        "strip: {} MB built -> {} MB shipped, {} MB of debug info kept apart",
        size(Path::new(crate::common::bin())) >> 20,
        size(&out) >> 20,
        size(&debug) >> 20
    );
}
