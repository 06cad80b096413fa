//! The workspace as `cargo metadata --no-deps` describes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::Error;

/// The workspace: its root and the members to audit.
pub(crate) struct Workspace {
    pub root: PathBuf,
    pub packages: Vec<Package>,
    pub metadata: serde_json::Value,
}

/// One workspace member.
pub(crate) struct Package {
    pub name: String,
    pub dir: PathBuf,
    pub is_root: bool,
    pub targets: Vec<Target>,
    pub metadata: serde_json::Value,
}

/// One target (lib, bin, example, test, bench) and its crate root.
#[derive(Deserialize)]
pub(crate) struct Target {
    pub name: String,
    pub kind: Vec<String>,
    pub src_path: PathBuf,
}

#[derive(Deserialize)]
struct RawMetadata {
    packages: Vec<RawPackage>,
    workspace_members: Vec<String>,
    workspace_root: PathBuf,
    #[serde(default)]
    metadata: serde_json::Value,
}

#[derive(Deserialize)]
struct RawPackage {
    name: String,
    id: String,
    manifest_path: PathBuf,
    targets: Vec<Target>,
    #[serde(default)]
    metadata: serde_json::Value,
}

/// Runs `cargo metadata --format-version 1 --no-deps --offline` with the
/// cargo that runs us (`$CARGO`), or `cargo` from `PATH`.
pub(crate) fn metadata(manifest_path: Option<&Path>) -> Result<Workspace, Error> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["metadata", "--format-version", "1", "--no-deps", "--offline"]);
    if let Some(path) = manifest_path {
        cmd.arg("--manifest-path").arg(path);
    }
    let out = cmd
        .output()
        .map_err(|e| Error::Metadata(format!("could not run `{}`: {e}", cargo.to_string_lossy())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Metadata(stderr.trim().to_string()));
    }
    parse_metadata(&out.stdout)
}

fn parse_metadata(json: &[u8]) -> Result<Workspace, Error> {
    let raw: RawMetadata =
        serde_json::from_slice(json).map_err(|e| Error::Metadata(format!("unreadable output: {e}")))?;
    let root_manifest = raw.workspace_root.join("Cargo.toml");
    let mut packages = Vec::new();
    for p in raw.packages {
        if !raw.workspace_members.contains(&p.id) {
            continue;
        }
        let dir = p
            .manifest_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        packages.push(Package {
            name: p.name,
            is_root: p.manifest_path == root_manifest,
            dir,
            targets: p.targets,
            metadata: p.metadata,
        });
    }
    Ok(Workspace {
        root: raw.workspace_root,
        packages,
        metadata: raw.metadata,
    })
}
