//! The rules, applied to a package's call graph.
//!
//! Entry points (handlers, async fns, spawned closures, configured paths)
//! seed a breadth-first walk over the resolved call edges; a function with
//! an item-level allow for `owner-per-request` is a fence the walk does not
//! cross. The walk's parent links give each finding its call chain.
//!
//! The walk keeps one bit of state per node: whether the code runs on an
//! owner thread (inside a closure given to `run`, `submit`, `call` or a
//! spawn's init). A configured constructor there makes the context where
//! it belongs, so only constructors reached off the owner are reported;
//! owner threads started there are still reported.

use std::collections::{HashMap, VecDeque};

use crate::config::Config;
use crate::scan::{Call, CallKind, Callee, EntryKind, Graph, SiteKind};
use crate::{ChainStep, Finding, Location, Report, Rule};

/// `path` matches `pattern`: a prefix when the pattern ends in `::`,
/// otherwise the whole path or a `::`-separated suffix of it.
pub(crate) fn path_matches(path: &str, pattern: &str) -> bool {
    if path.is_empty() {
        return false;
    }
    let pattern = pattern.trim_start_matches("::");
    if pattern.ends_with("::") {
        path.starts_with(pattern) || path.contains(&format!("::{pattern}"))
    } else {
        path == pattern || path.ends_with(&format!("::{pattern}"))
    }
}

struct Ctx<'g> {
    package: &'g str,
    g: &'g Graph,
    /// Per node: its resolved out-edges (target, call index).
    edges: Vec<Vec<(usize, usize)>>,
    /// Per node: why it is an entry, with a rank (lower is preferred).
    entries: HashMap<usize, (u8, String)>,
    /// Per node: rules allowed on the node (comments and configuration).
    allows: Vec<Vec<String>>,
    /// Per node and owner-state: the walk's parent link (node, state, call).
    parent: Vec<[Option<(usize, usize, usize)>; 2]>,
    /// Per node and owner-state (0: on a caller's thread, 1: on an owner).
    reached: Vec<[bool; 2]>,
}

/// The methods `name` of type `ty`: its own, else the default methods of
/// the traits it implements.
fn methods_of(g: &Graph, ty: &str, name: &str) -> Option<Vec<usize>> {
    if let Some(ids) = g.methods.get(&(ty.to_string(), name.to_string())) {
        return Some(ids.clone());
    }
    let ids: Vec<usize> = g
        .trait_impls
        .get(ty)?
        .iter()
        .filter_map(|tr| g.methods.get(&(tr.clone(), name.to_string())))
        .flatten()
        .copied()
        .collect();
    (!ids.is_empty()).then_some(ids)
}

fn resolve(g: &Graph, call: &Call) -> Vec<usize> {
    match &call.callee {
        Callee::Node(id) => vec![*id],
        Callee::Method { ty: Some(t), name } => methods_of(g, t, name).unwrap_or_default(),
        Callee::Method { ty: None, .. } => Vec::new(),
        Callee::Path {
            candidates,
            type_method,
            bare,
        } => {
            for c in candidates {
                if let Some(ids) = g.free_fns.get(c) {
                    return ids.clone();
                }
            }
            if let Some((ty, name)) = type_method {
                if let Some(ids) = methods_of(g, ty, name) {
                    return ids;
                }
            }
            // A bare name no path explains (a glob import, a re-export):
            // take it when only one function in the package has that name.
            if call.kind == CallKind::PathCall {
                if let Some(ids) = bare.as_ref().and_then(|b| g.by_name.get(b)) {
                    if ids.len() == 1 {
                        return ids.clone();
                    }
                }
            }
            Vec::new()
        }
    }
}

impl Ctx<'_> {
    fn loc(&self, file: usize, line: usize, column: usize) -> Location {
        Location {
            file: self.g.files[file].path.clone(),
            line,
            column,
        }
    }

    fn node_allows(&self, node: usize, rule: Rule) -> bool {
        self.allows[node].iter().any(|r| r == rule.name())
    }

    fn add_entry(&mut self, node: usize, rank: u8, note: String) {
        let e = self.entries.entry(node).or_insert((rank, note.clone()));
        if rank < e.0 {
            *e = (rank, note);
        }
    }

    fn walk(&mut self) {
        let mut order: Vec<(u8, usize)> = self.entries.iter().map(|(n, (r, _))| (*r, *n)).collect();
        order.sort();
        let mut queue = VecDeque::new();
        for (_, n) in order {
            if !self.node_allows(n, Rule::OwnerPerRequest) {
                self.reached[n][0] = true;
                queue.push_back((n, 0));
            }
        }
        while let Some((u, su)) = queue.pop_front() {
            for &(v, call) in &self.edges[u] {
                let sv = if su == 1 || self.g.nodes[u].calls[call].on_owner {
                    1
                } else {
                    0
                };
                if self.reached[v][sv] || self.node_allows(v, Rule::OwnerPerRequest) {
                    continue;
                }
                self.reached[v][sv] = true;
                self.parent[v][sv] = Some((u, su, call));
                queue.push_back((v, sv));
            }
        }
    }

    /// The state a node was reached in, preferring off-owner.
    fn state(&self, node: usize) -> Option<usize> {
        (0..2).find(|&s| self.reached[node][s])
    }

    fn chain(&self, node: usize, state: Option<usize>) -> Vec<ChainStep> {
        let mut rev = Vec::new();
        let mut v = node;
        let mut s = state.unwrap_or(0);
        while let Some((u, su, call)) = self.parent[v][s] {
            let c = &self.g.nodes[u].calls[call];
            let how = if c.kind == CallKind::Closure {
                "spawned in"
            } else if c.on_owner {
                "called on the owner thread from"
            } else {
                "called from"
            };
            rev.push(ChainStep {
                function: self.g.nodes[v].name.clone(),
                note: format!("{how} `{}`", self.g.nodes[u].name),
                location: self.loc(self.g.nodes[u].file, c.line, c.col),
            });
            v = u;
            s = su;
        }
        let n = &self.g.nodes[v];
        let note = match self.entries.get(&v) {
            Some((_, note)) if state.is_some() => note.clone(),
            _ => "async code (not reached from a per-request entry point)".to_string(),
        };
        rev.push(ChainStep {
            function: n.name.clone(),
            note,
            location: self.loc(n.file, n.line, n.col),
        });
        rev.reverse();
        rev
    }

    fn finding(
        &self,
        rule: Rule,
        node: usize,
        line: usize,
        col: usize,
        what: &str,
        message: String,
    ) -> Finding {
        let n = &self.g.nodes[node];
        let location = self.loc(n.file, line, col);
        let state = if rule == Rule::OwnerPerRequest && !self.reached[node][0] && self.reached[node][1] {
            Some(1)
        } else {
            self.reached[node][0].then_some(0)
        };
        let mut chain = self.chain(node, state);
        chain.push(ChainStep {
            function: what.to_string(),
            note: "flagged here".to_string(),
            location: location.clone(),
        });
        Finding {
            rule,
            package: self.package.to_string(),
            message,
            location,
            chain,
            help: rule.help().to_string(),
        }
    }

    fn entry_name(&self, node: usize) -> String {
        let mut v = node;
        let mut s = self.state(node).unwrap_or(0);
        while let Some((u, su, _)) = self.parent[v][s] {
            v = u;
            s = su;
        }
        self.g.nodes[v].name.clone()
    }
}

/// Applies the enabled rules to `g`, adding findings to `report`.
pub(crate) fn run(package: &str, g: &Graph, config: &Config, report: &mut Report) {
    let count = g.nodes.len();
    let mut cx = Ctx {
        package,
        g,
        edges: vec![Vec::new(); count],
        entries: HashMap::new(),
        allows: g.nodes.iter().map(|n| n.item_allows.clone()).collect(),
        parent: vec![[None; 2]; count],
        reached: vec![[false; 2]; count],
    };
    for (i, n) in g.nodes.iter().enumerate() {
        for a in &config.allow {
            if path_matches(&n.qname, &a.item) {
                cx.allows[i].push(a.rule.clone());
            }
        }
        if let Some(kind) = &n.entry {
            let (rank, note) = match kind {
                EntryKind::Attribute(a) => (0, format!("HTTP handler (`#[{a}]` attribute)")),
                EntryKind::Request(t) => (0, format!("HTTP handler (takes a `{t}`)")),
                EntryKind::ClosureHandler(how) => {
                    (0, format!("HTTP handler closure registered with `{how}`"))
                }
                EntryKind::Spawned(s) => (2, format!("task passed to `{s}`")),
                EntryKind::AsyncFn => (3, "async fn (runs per call, on runtime threads)".to_string()),
            };
            cx.add_entry(i, rank, note);
        }
        if config.entry_points.iter().any(|p| path_matches(&n.qname, p)) {
            cx.add_entry(i, 1, "entry point named in the configuration".to_string());
        }
        for (ci, call) in n.calls.iter().enumerate() {
            let targets = resolve(g, call);
            if call.kind == CallKind::Handler {
                let at = cx.loc(n.file, call.line, call.col);
                for t in targets {
                    cx.add_entry(
                        t,
                        0,
                        format!("HTTP handler registered with `{}` at {at}", call.note),
                    );
                }
            } else {
                for t in targets {
                    if t != i {
                        cx.edges[i].push((t, ci));
                    }
                }
            }
        }
    }
    cx.walk();
    let mut findings = Vec::new();
    let mut suppressed = 0;
    let mut worker_types: Vec<&str> = vec!["PinnedWorker", "Pool", "Route"];
    worker_types.extend(config.worker_types.iter().map(String::as_str));

    for (i, n) in g.nodes.iter().enumerate() {
        let file = &g.files[n.file];
        let node_allows = |rule: Rule| cx.node_allows(i, rule);
        // owner-per-request
        if config.enabled(Rule::OwnerPerRequest) {
            let fenced_hit = node_allows(Rule::OwnerPerRequest)
                && (cx.entries.contains_key(&i) || cx.edges.iter().flatten().any(|&(t, _)| t == i));
            if cx.state(i).is_some() || fenced_hit {
                let entry = cx.entry_name(i);
                for site in &n.sites {
                    let SiteKind::Owner(what) = &site.kind else {
                        continue;
                    };
                    if fenced_hit || file.allowed_at(Rule::OwnerPerRequest, site.line, site.stmt_line) {
                        suppressed += 1;
                        continue;
                    }
                    let message = format!(
                        "`{what}` starts an owner thread in code that runs per request (reached from `{entry}`)"
                    );
                    findings.push(cx.finding(Rule::OwnerPerRequest, i, site.line, site.col, what, message));
                }
                // Constructors on an owner thread make the context where it belongs.
                let off_owner = cx.reached[i][0] || (fenced_hit && !cx.reached[i][1]);
                for call in n
                    .calls
                    .iter()
                    .filter(|c| c.kind == CallKind::PathCall && !c.on_owner && off_owner)
                {
                    let Some(pattern) = config
                        .constructors
                        .iter()
                        .find(|p| path_matches(&call.expanded, p) || path_matches(&call.written, p))
                    else {
                        continue;
                    };
                    if fenced_hit || file.allowed_at(Rule::OwnerPerRequest, call.line, call.stmt_line) {
                        suppressed += 1;
                        continue;
                    }
                    let what = call.written.clone();
                    let message = format!(
                        "thread-affine constructor `{what}` (configured as `{pattern}`) runs per request \
                         (reached from `{entry}`)"
                    );
                    findings.push(cx.finding(Rule::OwnerPerRequest, i, call.line, call.col, &what, message));
                }
            }
        }
        // affine-call-in-async
        if config.enabled(Rule::AffineCallInAsync) {
            for call in n
                .calls
                .iter()
                .filter(|c| c.kind == CallKind::PathCall && c.in_async)
            {
                let configured = config
                    .thread_affine
                    .iter()
                    .any(|p| path_matches(&call.expanded, p) || path_matches(&call.written, p));
                let marked = match &call.callee {
                    Callee::Path { candidates, .. } => candidates.iter().any(|c| g.marked_affine.contains(c)),
                    _ => false,
                };
                if !configured && !marked {
                    continue;
                }
                if node_allows(Rule::AffineCallInAsync)
                    || file.allowed_at(Rule::AffineCallInAsync, call.line, call.stmt_line)
                {
                    suppressed += 1;
                    continue;
                }
                let what = call.written.clone();
                let message = format!(
                    "thread-affine `{what}` is called directly in async code; the task can move to \
                     another thread at every `.await`"
                );
                findings.push(cx.finding(Rule::AffineCallInAsync, i, call.line, call.col, &what, message));
            }
        }
        // blocking-in-async
        if config.enabled(Rule::BlockingInAsync) {
            for site in &n.sites {
                let SiteKind::Blocking {
                    method,
                    recv_ty,
                    via_submit,
                } = &site.kind
                else {
                    continue;
                };
                let on_worker = recv_ty.as_deref().is_some_and(|t| worker_types.contains(&t));
                let hit = if method.starts_with("run") {
                    on_worker
                } else {
                    true
                };
                if !hit {
                    continue;
                }
                if node_allows(Rule::BlockingInAsync)
                    || file.allowed_at(Rule::BlockingInAsync, site.line, site.stmt_line)
                {
                    suppressed += 1;
                    continue;
                }
                let on = match (recv_ty.as_deref(), via_submit) {
                    (_, true) => "a submitted job's ticket".to_string(),
                    (Some(t), _) => format!("a `{t}`"),
                    (None, _) => "a worker".to_string(),
                };
                let what = format!(".{method}(..)");
                let message = format!(
                    "blocking `{what}` on {on} in async code parks a runtime thread until the owner answers"
                );
                findings.push(cx.finding(Rule::BlockingInAsync, i, site.line, site.col, &what, message));
            }
        }
    }
    report.findings.extend(findings);
    report.suppressed += suppressed;
}

#[cfg(test)]
mod tests {
    use super::path_matches;

    #[test]
    fn patterns() {
        assert!(path_matches("ffi::aff_ctx_new", "ffi::"));
        assert!(path_matches("sys::ffi::aff_ctx_new", "ffi::"));
        assert!(!path_matches("affi::x", "ffi::"));
        assert!(path_matches("sdk::ctx_create", "sdk::ctx_create"));
        assert!(path_matches("my::sdk::ctx_create", "sdk::ctx_create"));
        assert!(!path_matches("my::xsdk::ctx_create", "sdk::ctx_create"));
        assert!(path_matches("handlers::create", "create"));
        assert!(!path_matches("", "create"));
    }
}
