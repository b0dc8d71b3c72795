//! Hints about a Pod's images that never change the verdict: an official `python:X.Y` image whose
//! version is not the env's.

use crate::keys::{ANN_PYTHON_MODE, ANN_PYTHON_VERSION};
use crate::plan::EnvPlan;

/// The `X.Y` an official `python` image's tag names (`python:3.11-slim` gives `3.11`).
fn official_python_version(image: &str) -> Option<&str> {
    if crate::config::image_repository(image) != "python" {
        return None;
    }
    let tag = image.split('@').next()?.rsplit_once(':')?.1;
    let end = tag.find(|c: char| c != '.' && !c.is_ascii_digit()).unwrap_or(tag.len());
    let mut parts = tag[..end].split('.');
    let (major, minor) = (parts.next()?, parts.next()?);
    (!major.is_empty() && !minor.is_empty()).then(|| &tag[..major.len() + 1 + minor.len()])
}

/// An official `python:X.Y` image whose version is not the env's: in overlay mode the packages
/// were installed for another Python (a warning); in venv mode the venv's `python` replaces the
/// image's (a note for preview).
pub fn python_image_mismatch(
    image: &str,
    container: &str,
    plan: &EnvPlan,
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    if !plan.has_python() {
        return;
    }
    let Some(theirs) = official_python_version(image) else { return };
    let ours = &plan.python_version;
    let same = ours.split('.').take(2).eq(theirs.split('.'));
    if same || !ours.contains('.') {
        return;
    }
    if plan.is_overlay() {
        warnings.push(format!(
            "nixuv: container {container:?} runs image {image:?} (Python {theirs}) but the env's Python deps are installed for Python {ours} ({ANN_PYTHON_VERSION} or defaultPython): in python mode overlay, packages with compiled code will not import; set {ANN_PYTHON_VERSION}: \"{theirs}\""
        ));
    } else {
        notes.push(format!(
            "container {container:?} runs image {image:?} (Python {theirs}) but the env's venv has Python {ours}: the venv comes first on PATH, so `python` there is {ours} and the image's packages are not seen; set {ANN_PYTHON_VERSION}: \"{theirs}\" or use {ANN_PYTHON_MODE}: overlay to keep the image's Python"
        ));
    }
}
