//! Configuration: which functions are thread-affine, which are entry points,
//! which rules run, and allows that live outside the sources.
//!
//! Read, in order, each later layer adding to the lists and overriding the
//! rule switches of the one before:
//!
//! 1. `[workspace.metadata.pinned-audit]` in the workspace's `Cargo.toml`;
//! 2. `pinned-audit.toml` beside the workspace's `Cargo.toml`;
//! 3. `[package.metadata.pinned-audit]` in the package's `Cargo.toml`;
//! 4. `pinned-audit.toml` beside the package's `Cargo.toml` (when the
//!    package is not the workspace root);
//! 5. the file given with `--config`.
//!
//! ```toml
//! thread-affine = ["ffi::", "cuda::"]          # path prefixes, or whole paths
//! constructors = ["sdk::Context::create"]      # owner-like: flagged per request
//! entry-points = ["server::Conn::serve"]       # extra per-request entry points
//! worker-types = ["GpuWorker"]                 # types whose `run` blocks
//!
//! [rules]
//! blocking-in-async = false
//!
//! [[allow]]
//! rule = "owner-per-request"
//! item = "bench::spawn_many"                   # a function, by path suffix
//! reason = "measures owner start-up on purpose"
//! ```
//!
//! Unknown keys and unknown rule names are errors, so a typo never turns a
//! check off silently.

use std::path::Path;

use serde::Deserialize;

use crate::load::{Package, Workspace};
use crate::{Error, Rule};

/// The audit's configuration, merged from every layer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Thread-affine functions: a path prefix ending in `::` (`"ffi::"`) or
    /// a whole path (`"sdk::ctx_create"`, matched as a path suffix).
    #[serde(default)]
    pub thread_affine: Vec<String>,
    /// Thread-affine constructors, reported like an owner thread when they
    /// run per request (patterns as for `thread_affine`).
    #[serde(default)]
    pub constructors: Vec<String>,
    /// Extra per-request entry points: function paths, matched as a suffix
    /// of `module::function` or `module::Type::method`.
    #[serde(default)]
    pub entry_points: Vec<String>,
    /// Types, besides `PinnedWorker`, `Pool` and `Route`, whose `run` blocks.
    #[serde(default)]
    pub worker_types: Vec<String>,
    /// Rules switched on or off (all are on by default).
    #[serde(default)]
    pub rules: Rules,
    /// Allows kept in configuration, each with its reason.
    #[serde(default)]
    pub allow: Vec<Allow>,
}

/// Rule switches; `None` leaves a rule as the layer before set it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rules {
    /// Switches [`Rule::OwnerPerRequest`].
    pub owner_per_request: Option<bool>,
    /// Switches [`Rule::AffineCallInAsync`].
    pub affine_call_in_async: Option<bool>,
    /// Switches [`Rule::BlockingInAsync`].
    pub blocking_in_async: Option<bool>,
}

/// An allow kept in configuration rather than in a comment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    /// The rule's name, e.g. `"owner-per-request"`.
    pub rule: String,
    /// The function it covers (path suffix, as for entry points); the
    /// allow also stops per-request reach through it.
    pub item: String,
    /// Why the finding is acceptable; required and non-empty.
    pub reason: String,
}

impl Config {
    /// Adds `later`'s lists to this one's; `later`'s rule switches win.
    pub fn merge(&mut self, later: Config) {
        self.thread_affine.extend(later.thread_affine);
        self.constructors.extend(later.constructors);
        self.entry_points.extend(later.entry_points);
        self.worker_types.extend(later.worker_types);
        self.allow.extend(later.allow);
        let r = later.rules;
        self.rules.owner_per_request = r.owner_per_request.or(self.rules.owner_per_request);
        self.rules.affine_call_in_async = r.affine_call_in_async.or(self.rules.affine_call_in_async);
        self.rules.blocking_in_async = r.blocking_in_async.or(self.rules.blocking_in_async);
    }

    /// Whether `rule` runs.
    pub fn enabled(&self, rule: Rule) -> bool {
        match rule {
            Rule::OwnerPerRequest => self.rules.owner_per_request,
            Rule::AffineCallInAsync => self.rules.affine_call_in_async,
            Rule::BlockingInAsync => self.rules.blocking_in_async,
        }
        .unwrap_or(true)
    }

    fn validate(self, origin: &str) -> Result<Config, Error> {
        for allow in &self.allow {
            if Rule::from_name(&allow.rule).is_none() {
                return Err(Error::Config(format!(
                    "{origin}: unknown rule `{}` in [[allow]]; the rules are {}",
                    allow.rule,
                    rule_names()
                )));
            }
            if allow.reason.trim().is_empty() {
                return Err(Error::Config(format!(
                    "{origin}: the [[allow]] for `{}` has an empty reason; say why it is acceptable",
                    allow.item
                )));
            }
        }
        for p in self
            .thread_affine
            .iter()
            .chain(&self.constructors)
            .chain(&self.entry_points)
        {
            if p.trim().is_empty() || p == "::" {
                return Err(Error::Config(format!("{origin}: empty path pattern `{p}`")));
            }
        }
        Ok(self)
    }
}

/// The rule names, comma-separated, for messages.
pub(crate) fn rule_names() -> String {
    Rule::ALL
        .iter()
        .map(|r| format!("`{r}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn from_json(value: &serde_json::Value, origin: &str) -> Result<Config, Error> {
    Config::deserialize(value)
        .map_err(|e| Error::Config(format!("{origin}: {e}")))
        .and_then(|c| c.validate(origin))
}

/// Reads a `pinned-audit.toml`.
pub fn read_file(path: &Path) -> Result<Config, Error> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{origin}: {e}")))?;
    toml::from_str::<Config>(&text)
        .map_err(|e| Error::Config(format!("{origin}: {}", e.to_string().trim_end())))
        .and_then(|c| c.validate(&origin))
}

fn optional_file(dir: &Path) -> Result<Config, Error> {
    let path = dir.join("pinned-audit.toml");
    if path.is_file() {
        read_file(&path)
    } else {
        Ok(Config::default())
    }
}

/// The workspace's layers: `[workspace.metadata.pinned-audit]`, then the
/// root's `pinned-audit.toml`.
pub(crate) fn workspace_config(ws: &Workspace) -> Result<Config, Error> {
    let mut config = Config::default();
    if let Some(v) = ws.metadata.get("pinned-audit") {
        config.merge(from_json(v, "[workspace.metadata.pinned-audit]")?);
    }
    config.merge(optional_file(&ws.root)?);
    Ok(config)
}

/// A package's layers: `[package.metadata.pinned-audit]`, then its own
/// `pinned-audit.toml` when it is not the workspace root.
pub(crate) fn package_config(package: &Package) -> Result<Config, Error> {
    let mut config = Config::default();
    if let Some(v) = package.metadata.get("pinned-audit") {
        let origin = format!("[package.metadata.pinned-audit] of {}", package.name);
        config.merge(from_json(v, &origin)?);
    }
    if !package.is_root {
        config.merge(optional_file(&package.dir)?);
    }
    Ok(config)
}
