//! Parsing a package's sources into a call graph by name.
//!
//! Phase one follows `mod` declarations from each target's crate root and
//! keeps every module's items, its `use` map and the crate's struct fields.
//! Phase two walks every function body with a `syn` visitor and records,
//! per function or spawned closure (a [`Node`]): the calls it makes (by
//! path, by method on a receiver whose type it can name, by function
//! reference), the owner-creating and blocking expressions in it, whether
//! each is in async context, and the handlers it registers.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use proc_macro2::Span;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit::{self, Visit};
use syn::{Attribute, Expr, FnArg, ImplItem, Item, Pat, Stmt, TraitItem, Type, UseTree};

use crate::load::Package;
use crate::{Problem, Rule};

/// One parsed source file and its `pinned-audit:` comments.
pub(crate) struct FileInfo {
    pub path: PathBuf,
    /// Line → rule names allowed by a comment on that line.
    pub allows: HashMap<usize, Vec<String>>,
    /// Lines that hold only a comment.
    pub comment_only: HashSet<usize>,
    /// Lines with a `pinned-audit: thread-affine` marker.
    pub affine_marks: HashSet<usize>,
}

impl FileInfo {
    /// Whether `rule` is allowed on `line`, or by the comment lines directly
    /// above `line` or above `stmt_line`.
    pub fn allowed_at(&self, rule: Rule, line: usize, stmt_line: usize) -> bool {
        [line, stmt_line].into_iter().any(|l| {
            self.has(l, rule) || {
                let mut above = l.saturating_sub(1);
                let mut found = false;
                while above > 0 && self.comment_only.contains(&above) {
                    if self.has(above, rule) {
                        found = true;
                        break;
                    }
                    above -= 1;
                }
                found
            }
        })
    }

    fn has(&self, line: usize, rule: Rule) -> bool {
        self.allows
            .get(&line)
            .is_some_and(|v| v.iter().any(|r| r == rule.name()))
    }

    /// Rules allowed for an item spanning `start..=sig` (attributes, docs,
    /// signature) and by the comment block directly above it.
    fn item_allows(&self, start: usize, sig: usize) -> Vec<String> {
        let mut out = Vec::new();
        for l in start..=sig.max(start) {
            out.extend(self.allows.get(&l).into_iter().flatten().cloned());
        }
        let mut above = start.saturating_sub(1);
        while above > 0 && self.comment_only.contains(&above) {
            out.extend(self.allows.get(&above).into_iter().flatten().cloned());
            above -= 1;
        }
        out
    }

    fn marked_affine(&self, start: usize, sig: usize) -> bool {
        if (start..=sig.max(start)).any(|l| self.affine_marks.contains(&l)) {
            return true;
        }
        let mut above = start.saturating_sub(1);
        while above > 0 && self.comment_only.contains(&above) {
            if self.affine_marks.contains(&above) {
                return true;
            }
            above -= 1;
        }
        false
    }
}

/// Who a call goes to, as far as syntax says.
#[derive(Debug, Clone)]
pub(crate) enum Callee {
    /// A path call or function reference: absolute candidates to look up,
    /// a `Type::method` reading, and the bare name for a unique-name guess.
    Path {
        candidates: Vec<String>,
        type_method: Option<(String, String)>,
        bare: Option<String>,
    },
    /// A method call on a receiver whose type is known (or not).
    Method { ty: Option<String>, name: String },
    /// A closure node of this graph.
    Node(usize),
}

/// How a call appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// `f(..)`.
    PathCall,
    /// `x.f(..)`.
    Method,
    /// `f` passed as a value (`map(f)`).
    FnRef,
    /// A closure spawned or registered here.
    Closure,
    /// A handler registered with a router: an entry point, not an edge.
    Handler,
}

/// A call site in a node.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub callee: Callee,
    pub kind: CallKind,
    /// The path as written, `::`-joined (for path calls).
    pub written: String,
    /// The path with its first segment expanded through `use`.
    pub expanded: String,
    pub line: usize,
    pub col: usize,
    pub stmt_line: usize,
    pub in_async: bool,
    /// Inside a closure a worker runs on its owner thread (`run`, `submit`,
    /// `call`, a spawn's init closure).
    pub on_owner: bool,
    /// For handler registrations: how (`get(..)`, `.to(..)`).
    pub note: String,
}

/// A flagged expression kind found while scanning.
#[derive(Debug, Clone)]
pub(crate) enum SiteKind {
    /// An owner thread created here; the text names the expression.
    Owner(String),
    /// A blocking method in async context.
    Blocking {
        method: String,
        recv_ty: Option<String>,
        via_submit: bool,
    },
}

/// A flagged expression.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    pub kind: SiteKind,
    pub line: usize,
    pub col: usize,
    pub stmt_line: usize,
}

/// Why a node is an entry point by its own syntax.
#[derive(Debug, Clone)]
pub(crate) enum EntryKind {
    /// `#[get(..)]`-style attribute.
    Attribute(String),
    /// A parameter of type `Request` / `HttpRequest`.
    Request(String),
    /// An `async fn` that is not a `main` or a test.
    AsyncFn,
    /// A closure or async block given to a task spawner.
    Spawned(String),
    /// A closure registered as a handler.
    ClosureHandler(String),
}

/// A function, method or spawned closure.
pub(crate) struct Node {
    /// Display name: `handlers::create`, `Db::query`,
    /// `closure passed to tokio::spawn in serve`.
    pub name: String,
    /// The qualified name matched by entry-point and allow patterns.
    pub qname: String,
    pub file: usize,
    pub line: usize,
    pub col: usize,
    pub entry: Option<EntryKind>,
    pub item_allows: Vec<String>,
    pub calls: Vec<Call>,
    pub sites: Vec<Site>,
}

/// A package's call graph.
#[derive(Default)]
pub(crate) struct Graph {
    pub files: Vec<FileInfo>,
    pub nodes: Vec<Node>,
    pub free_fns: HashMap<String, Vec<usize>>,
    pub methods: HashMap<(String, String), Vec<usize>>,
    pub by_name: HashMap<String, Vec<usize>>,
    /// Qualified paths of `extern` functions marked thread-affine.
    pub marked_affine: HashSet<String>,
    /// Type name → the traits it implements (`impl Trait for Type`), whose
    /// default methods it then has.
    pub trait_impls: HashMap<String, Vec<String>>,
}

#[derive(Clone, Default)]
struct UseMap {
    names: HashMap<String, Vec<String>>,
    globs: Vec<Vec<String>>,
}

impl UseMap {
    fn add(&mut self, tree: &UseTree, prefix: &mut Vec<String>) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.add(&p.tree, prefix);
                prefix.pop();
            }
            UseTree::Name(n) => {
                let name = n.ident.to_string();
                if name == "self" {
                    if let Some(last) = prefix.last() {
                        self.names.insert(last.clone(), prefix.clone());
                    }
                } else {
                    let mut full = prefix.clone();
                    full.push(name.clone());
                    self.names.insert(name, full);
                }
            }
            UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                self.names.insert(r.rename.to_string(), full);
            }
            UseTree::Glob(_) => self.globs.push(prefix.clone()),
            UseTree::Group(g) => {
                for t in &g.items {
                    self.add(t, prefix);
                }
            }
        }
    }
}

#[derive(Clone)]
struct ModCtx {
    /// Crate key then module names.
    path: Vec<String>,
    /// Where child module files live.
    dir: PathBuf,
    file: usize,
    allows: Vec<String>,
}

struct Unit {
    ctx: ModCtx,
    uses: UseMap,
    items: Vec<Item>,
}

struct Scanner<'a> {
    graph: Graph,
    problems: &'a mut Vec<Problem>,
    include_tests: bool,
    units: Vec<Unit>,
    fields: HashMap<(String, String), String>,
    /// (crate key, file): a file shared by two targets (`tests/common`)
    /// is read once per target, and a `#[path]` cycle ends.
    loaded: HashSet<(String, PathBuf)>,
    /// Files already reported for nesting past [`MAX_DEPTH`].
    too_deep: HashSet<usize>,
    /// The path of the `impl` being scanned, as written (`sdk::Context`):
    /// what `Self::` stands for in configured paths.
    impl_path: Option<Vec<String>>,
    /// Module path (`::`-joined, crate key first) → names of the items
    /// defined in it: what a glob import of the module brings in.
    module_items: HashMap<String, HashSet<String>>,
}

/// Scans every audited target of `package`.
pub(crate) fn scan_package(package: &Package, include_tests: bool, problems: &mut Vec<Problem>) -> Graph {
    let mut s = Scanner {
        graph: Graph::default(),
        problems,
        include_tests,
        units: Vec::new(),
        fields: HashMap::new(),
        loaded: HashSet::new(),
        too_deep: HashSet::new(),
        impl_path: None,
        module_items: HashMap::new(),
    };
    let lib_name = package
        .targets
        .iter()
        .find(|t| {
            t.kind
                .iter()
                .any(|k| matches!(k.as_str(), "lib" | "rlib" | "dylib" | "proc-macro"))
        })
        .map(|t| t.name.replace('-', "_"));
    for target in &package.targets {
        let lib_like = target.kind.iter().any(|k| {
            matches!(
                k.as_str(),
                "lib" | "rlib" | "dylib" | "cdylib" | "staticlib" | "proc-macro"
            )
        });
        let wanted = lib_like
            || target.kind.iter().any(|k| match k.as_str() {
                "bin" | "example" => true,
                "test" | "bench" => include_tests,
                _ => false,
            });
        if !wanted {
            continue;
        }
        let crate_name = target.name.replace('-', "_");
        let key = if lib_like && Some(&crate_name) == lib_name.as_ref() {
            crate_name
        } else {
            format!(
                "{}:{}",
                target.kind.first().map(String::as_str).unwrap_or("bin"),
                crate_name
            )
        };
        let dir = target
            .src_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        s.load_file(&target.src_path, vec![key], dir, Vec::new(), None);
    }
    let units = std::mem::take(&mut s.units);
    for unit in &units {
        s.scan_unit(unit);
    }
    s.graph
}

/// How deep brackets may nest in a file, and expressions in a body, before
/// the audit gives up on the file (and reports it) rather than risk its stack.
pub(crate) const MAX_DEPTH: usize = 2048;

/// The first place where `( [ {` nest deeper than [`MAX_DEPTH`]: (depth,
/// line, column). Lexing does not recurse; parsing would.
fn too_deep(text: &str) -> Option<(usize, usize, usize)> {
    use proc_macro2::{TokenStream, TokenTree};
    let tokens: TokenStream = text.parse().ok()?;
    let mut stack = vec![tokens.into_iter()];
    while let Some(top) = stack.last_mut() {
        match top.next() {
            Some(TokenTree::Group(g)) => {
                if stack.len() >= MAX_DEPTH {
                    let (line, col) = line_col(g.span_open());
                    return Some((stack.len() + 1, line, col));
                }
                stack.push(g.stream().into_iter());
            }
            Some(_) => {}
            None => {
                stack.pop();
            }
        }
    }
    None
}

fn line_col(span: Span) -> (usize, usize) {
    let lc = span.start();
    (lc.line, lc.column + 1)
}

fn is_ident_start_upper(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
}

fn path_segs(path: &syn::Path) -> Vec<String> {
    path.segments.iter().map(|s| s.ident.to_string()).collect()
}

fn attr_last(attr: &Attribute) -> String {
    attr.path()
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .unwrap_or_default()
}

fn is_test_attr(attr: &Attribute) -> bool {
    let last = attr_last(attr);
    if last == "test" || last == "bench" {
        return true;
    }
    if attr.path().is_ident("cfg") {
        if let Ok(pred) = attr.parse_args::<syn::Meta>() {
            return cfg_requires_test(&pred);
        }
    }
    false
}

/// Whether a `cfg` predicate holds only under `cfg(test)`: `test` itself,
/// or an `all(..)` with such a conjunct. `any(test, ..)`, `not(..)` and
/// features named like tests (`feature = "test-util"`) are production code.
fn cfg_requires_test(pred: &syn::Meta) -> bool {
    match pred {
        syn::Meta::Path(p) => p.is_ident("test"),
        syn::Meta::List(list) if list.path.is_ident("all") => list
            .parse_args_with(Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
            .is_ok_and(|items| items.iter().any(cfg_requires_test)),
        _ => false,
    }
}

fn is_test_item(attrs: &[Attribute]) -> bool {
    attrs.iter().any(is_test_attr)
}

const WRAPPERS: &[&str] = &[
    "Arc",
    "Rc",
    "Box",
    "Cow",
    "State",
    "Data",
    "Extension",
    "Mutex",
    "RwLock",
    "Option",
    "RefCell",
    "Cell",
    "OnceLock",
    "OnceCell",
    "LazyLock",
    "ManuallyDrop",
];

/// The name of a type, looking through references and common wrappers:
/// `&State<Arc<Pool<Ctx>>>` is `Pool`.
pub(crate) fn type_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Reference(r) => type_name(&r.elem),
        Type::Paren(p) => type_name(&p.elem),
        Type::Group(g) => type_name(&g.elem),
        Type::Path(p) => {
            let last = p.path.segments.last()?;
            let name = last.ident.to_string();
            if WRAPPERS.contains(&name.as_str()) {
                if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
                    for arg in &args.args {
                        if let syn::GenericArgument::Type(inner) = arg {
                            return type_name(inner);
                        }
                    }
                }
            }
            Some(name)
        }
        _ => None,
    }
}

fn pat_idents(pat: &Pat, out: &mut Vec<String>) {
    match pat {
        Pat::Ident(i) => {
            out.push(i.ident.to_string());
            if let Some((_, sub)) = &i.subpat {
                pat_idents(sub, out);
            }
        }
        Pat::TupleStruct(t) => t.elems.iter().for_each(|p| pat_idents(p, out)),
        Pat::Tuple(t) => t.elems.iter().for_each(|p| pat_idents(p, out)),
        Pat::Reference(r) => pat_idents(&r.pat, out),
        Pat::Type(t) => pat_idents(&t.pat, out),
        Pat::Paren(p) => pat_idents(&p.pat, out),
        Pat::Struct(s) => s.fields.iter().for_each(|f| pat_idents(&f.pat, out)),
        _ => {}
    }
}

/// The `//` comments of a Rust source: (1-based line, byte offset in the
/// line) of each, skipping string and character literals and block comments.
fn line_comments(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line, mut line_start) = (0, 1, 0);
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        match b[i] {
            b'\n' => {
                line += 1;
                line_start = i + 1;
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                out.push((line, i - line_start));
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if b[i] == b'\n' {
                            line += 1;
                            line_start = i + 1;
                        }
                        i += 1;
                    }
                }
            }
            b'r' | b'b' if i == 0 || !ident(b[i - 1]) => {
                // r"..", r#".."#, br"..": raw strings have no escapes.
                let mut j = i + 1;
                if b[i] == b'b' && b.get(j) == Some(&b'r') {
                    j += 1;
                }
                let raw = b[i] == b'r' || j == i + 2;
                let mut hashes = 0;
                while raw && b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if raw && b.get(j) == Some(&b'"') {
                    j += 1;
                    loop {
                        match b.get(j) {
                            None => break,
                            Some(b'"')
                                if b[j + 1..].iter().take(hashes).filter(|&&c| c == b'#').count()
                                    == hashes =>
                            {
                                j += 1 + hashes;
                                break;
                            }
                            Some(b'\n') => {
                                line += 1;
                                line_start = j + 1;
                                j += 1;
                            }
                            _ => j += 1,
                        }
                    }
                    i = j;
                } else {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    if i < b.len() && b[i] == b'\n' {
                        line += 1;
                        line_start = i + 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
                if b.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 2;
                    while j < b.len() && b[j] != b'\'' && b[j] != b'\n' {
                        j += 1;
                    }
                    i = j + 1;
                } else {
                    let len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                    if b.get(i + 1 + len) == Some(&b'\'') {
                        i += len + 2;
                    } else {
                        i += 1;
                    }
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Scans a file's lines for `// pinned-audit: ...` directives.
fn scan_comments(text: &str, path: &Path, problems: &mut Vec<Problem>) -> FileInfo {
    let mut info = FileInfo {
        path: path.to_path_buf(),
        allows: HashMap::new(),
        comment_only: HashSet::new(),
        affine_marks: HashSet::new(),
    };
    let lines: Vec<&str> = text.lines().collect();
    for (n, pos) in line_comments(text) {
        let line = lines.get(n - 1).copied().unwrap_or_default();
        if line[..pos].trim().is_empty() {
            info.comment_only.insert(n);
        }
        let rest = line[pos..].trim_start_matches(['/', '!']).trim_start();
        let Some(directive) = rest.strip_prefix("pinned-audit:") else {
            continue;
        };
        let directive = directive.trim_start();
        if directive.starts_with("thread-affine") {
            info.affine_marks.insert(n);
        } else if let Some(args) = directive.strip_prefix("allow(") {
            let Some(end) = args.find(')') else {
                problems.push(Problem {
                    file: Some(path.to_path_buf()),
                    line: Some(n),
                    column: Some(pos + 1),
                    message: "unclosed `pinned-audit: allow(` comment".into(),
                });
                continue;
            };
            for name in args[..end].split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if Rule::from_name(name).is_none() {
                    problems.push(Problem {
                        file: Some(path.to_path_buf()),
                        line: Some(n),
                        column: Some(pos + 1),
                        message: format!(
                            "unknown rule `{name}` in an allow comment; the rules are {}",
                            crate::config::rule_names()
                        ),
                    });
                }
                info.allows.entry(n).or_default().push(name.to_string());
            }
        } else {
            problems.push(Problem {
                file: Some(path.to_path_buf()),
                line: Some(n),
                column: Some(pos + 1),
                message: "a `pinned-audit:` comment must be `allow(<rule>, ..)` or `thread-affine`".into(),
            });
        }
    }
    info
}

impl Scanner<'_> {
    fn load_file(
        &mut self,
        path: &Path,
        mod_path: Vec<String>,
        dir: PathBuf,
        allows: Vec<String>,
        decl: Option<(usize, usize, usize)>,
    ) {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if !self.loaded.insert((mod_path[0].clone(), canonical)) {
            return;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let (file, line, column) = match decl {
                    Some((f, l, c)) => (Some(self.graph.files[f].path.clone()), Some(l), Some(c)),
                    None => (Some(path.to_path_buf()), None, None),
                };
                self.problems.push(Problem {
                    file,
                    line,
                    column,
                    message: format!("cannot read module file {}: {e}; skipped", path.display()),
                });
                return;
            }
        };
        let info = scan_comments(&text, path, self.problems);
        if let Some((depth, line, column)) = too_deep(&text) {
            self.problems.push(Problem {
                file: Some(path.to_path_buf()),
                line: Some(line),
                column: Some(column),
                message: format!(
                    "brackets nest {depth} levels deep here, more than the audit's limit of {MAX_DEPTH}; \
                     the file was skipped, so nothing in it was checked"
                ),
            });
            return;
        }
        let parsed = syn::parse_file(&text);
        let file = match parsed {
            Ok(f) => f,
            Err(e) => {
                let (line, column) = line_col(e.span());
                self.problems.push(Problem {
                    file: Some(path.to_path_buf()),
                    line: Some(line),
                    column: Some(column),
                    message: format!("does not parse: {e}; skipped, so nothing in it was checked"),
                });
                return;
            }
        };
        let index = self.graph.files.len();
        self.graph.files.push(info);
        let ctx = ModCtx {
            path: mod_path,
            dir,
            file: index,
            allows,
        };
        self.add_unit(ctx, file.items);
    }

    fn add_unit(&mut self, ctx: ModCtx, items: Vec<Item>) {
        let defined = self.module_items.entry(ctx.path.join("::")).or_default();
        for item in &items {
            let ident = match item {
                Item::Fn(i) => &i.sig.ident,
                Item::Struct(i) => &i.ident,
                Item::Enum(i) => &i.ident,
                Item::Const(i) => &i.ident,
                Item::Static(i) => &i.ident,
                Item::Mod(i) => &i.ident,
                Item::Macro(syn::ItemMacro { ident: Some(i), .. }) => i,
                Item::ForeignMod(fm) => {
                    for f in &fm.items {
                        if let syn::ForeignItem::Fn(f) = f {
                            defined.insert(f.sig.ident.to_string());
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            defined.insert(ident.to_string());
        }
        let mut uses = UseMap::default();
        let mut kept = Vec::new();
        for item in items {
            if !self.include_tests && is_test_item(item_attrs(&item)) {
                continue;
            }
            match item {
                Item::Use(u) => uses.add(&u.tree, &mut Vec::new()),
                Item::Mod(m) => self.add_mod(&ctx, m),
                Item::Struct(s) => {
                    let name = s.ident.to_string();
                    for (i, f) in s.fields.iter().enumerate() {
                        let fname = f
                            .ident
                            .as_ref()
                            .map(|i| i.to_string())
                            .unwrap_or_else(|| i.to_string());
                        if let Some(t) = type_name(&f.ty) {
                            self.fields.insert((name.clone(), fname), t);
                        }
                    }
                }
                other => kept.push(other),
            }
        }
        self.units.push(Unit {
            ctx,
            uses,
            items: kept,
        });
    }

    fn add_mod(&mut self, ctx: &ModCtx, m: syn::ItemMod) {
        let name = m.ident.to_string();
        let info = &self.graph.files[ctx.file];
        let start = m.span().start().line;
        let allows = {
            let mut a = ctx.allows.clone();
            a.extend(info.item_allows(start, m.ident.span().start().line));
            a
        };
        let mut path = ctx.path.clone();
        path.push(name.clone());
        let path_attr = m.attrs.iter().find_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
                Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        });
        match m.content {
            Some((_, items)) => {
                let dir = ctx.dir.join(&name);
                let child = ModCtx {
                    path,
                    dir,
                    file: ctx.file,
                    allows,
                };
                self.add_unit(child, items);
            }
            None => {
                let (line, col) = line_col(m.ident.span());
                let (file, dir) = if let Some(p) = path_attr {
                    let base = self.graph.files[ctx.file]
                        .path
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    let file = base.join(p);
                    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
                    (file, dir)
                } else {
                    let flat = ctx.dir.join(format!("{name}.rs"));
                    if flat.is_file() {
                        (flat, ctx.dir.join(&name))
                    } else {
                        (ctx.dir.join(&name).join("mod.rs"), ctx.dir.join(&name))
                    }
                };
                self.load_file(&file, path, dir, allows, Some((ctx.file, line, col)));
            }
        }
    }

    fn scan_unit(&mut self, unit: &Unit) {
        for item in &unit.items {
            self.scan_item(unit, item, None);
        }
    }

    fn scan_item(&mut self, unit: &Unit, item: &Item, parent_allows: Option<&[String]>) {
        let info = &self.graph.files[unit.ctx.file];
        let mut base_allows = unit.ctx.allows.clone();
        if let Some(p) = parent_allows {
            base_allows.extend_from_slice(p);
        }
        match item {
            Item::Fn(f) => {
                let mut allows = base_allows;
                allows.extend(info.item_allows(f.span().start().line, f.sig.ident.span().start().line));
                let saved_impl = self.impl_path.take();
                self.scan_fn(unit, &f.attrs, &f.sig, &f.block, None, allows);
                self.impl_path = saved_impl;
            }
            Item::Impl(imp) => {
                let Some(self_ty) = type_name(&imp.self_ty) else {
                    return;
                };
                let mut allows = base_allows;
                allows.extend(info.item_allows(imp.span().start().line, imp.self_ty.span().start().line));
                let impl_path = match &*imp.self_ty {
                    Type::Path(p) if p.qself.is_none() => Some(path_segs(&p.path)),
                    _ => None,
                };
                if let Some((_, tr, _)) = &imp.trait_ {
                    if let Some(last) = tr.segments.last() {
                        let traits = self.graph.trait_impls.entry(self_ty.clone()).or_default();
                        let tr = last.ident.to_string();
                        if !traits.contains(&tr) {
                            traits.push(tr);
                        }
                    }
                }
                let saved_impl = std::mem::replace(&mut self.impl_path, impl_path);
                for it in &imp.items {
                    if let ImplItem::Fn(f) = it {
                        if !self.include_tests && is_test_item(&f.attrs) {
                            continue;
                        }
                        let info = &self.graph.files[unit.ctx.file];
                        let mut a = allows.clone();
                        a.extend(info.item_allows(f.span().start().line, f.sig.ident.span().start().line));
                        self.scan_fn(unit, &f.attrs, &f.sig, &f.block, Some(&self_ty), a);
                    }
                }
                self.impl_path = saved_impl;
            }
            Item::Trait(t) => {
                let name = t.ident.to_string();
                let saved_impl = self.impl_path.take();
                let mut allows = base_allows;
                allows.extend(info.item_allows(t.span().start().line, t.ident.span().start().line));
                for it in &t.items {
                    if let TraitItem::Fn(f) = it {
                        if let Some(block) = &f.default {
                            let info = &self.graph.files[unit.ctx.file];
                            let mut a = allows.clone();
                            a.extend(
                                info.item_allows(f.span().start().line, f.sig.ident.span().start().line),
                            );
                            self.scan_fn(unit, &f.attrs, &f.sig, block, Some(&name), a);
                        }
                    }
                }
                self.impl_path = saved_impl;
            }
            Item::ForeignMod(fm) => {
                let block_marked = info.marked_affine(fm.span().start().line, fm.abi.span().start().line);
                for it in &fm.items {
                    if let syn::ForeignItem::Fn(f) = it {
                        let marked = block_marked
                            || self.graph.files[unit.ctx.file]
                                .marked_affine(f.span().start().line, f.sig.ident.span().start().line);
                        if marked {
                            let mut q = unit.ctx.path.clone();
                            q.push(f.sig.ident.to_string());
                            self.graph.marked_affine.insert(q.join("::"));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn scan_fn(
        &mut self,
        unit: &Unit,
        attrs: &[Attribute],
        sig: &syn::Signature,
        block: &syn::Block,
        self_ty: Option<&str>,
        allows: Vec<String>,
    ) {
        let name = sig.ident.to_string();
        let mut qual: Vec<String> = unit.ctx.path[1..].to_vec();
        if let Some(t) = self_ty {
            qual.push(t.to_string());
        }
        qual.push(name.clone());
        let display = qual.join("::");
        let mut locals = HashMap::new();
        let mut entry = None;
        for arg in &sig.inputs {
            match arg {
                FnArg::Receiver(_) => {
                    if let Some(t) = self_ty {
                        locals.insert("self".to_string(), t.to_string());
                    }
                }
                FnArg::Typed(pt) => {
                    // An empty type still marks the name as a local, not a function.
                    let t = type_name(&pt.ty).unwrap_or_default();
                    if entry.is_none() && (t == "Request" || t == "HttpRequest") {
                        entry = Some(EntryKind::Request(t.clone()));
                    }
                    let mut ids = Vec::new();
                    pat_idents(&pt.pat, &mut ids);
                    for id in ids {
                        locals.insert(id, t.clone());
                    }
                }
            }
        }
        const HANDLER_ATTRS: &[&str] = &[
            "get", "post", "put", "delete", "patch", "head", "options", "trace", "connect", "route",
            "handler",
        ];
        if let Some(a) = attrs
            .iter()
            .find(|a| HANDLER_ATTRS.contains(&attr_last(a).as_str()))
        {
            entry = Some(EntryKind::Attribute(attr_last(a)));
        }
        let is_main_like = name == "main"
            || attrs
                .iter()
                .any(|a| matches!(attr_last(a).as_str(), "main" | "test"));
        let is_async = sig.asyncness.is_some();
        if entry.is_none() && is_async && !is_main_like {
            entry = Some(EntryKind::AsyncFn);
        }
        let (line, col) = line_col(sig.ident.span());
        let id = self.graph.nodes.len();
        self.graph.nodes.push(Node {
            name: display.clone(),
            qname: display.clone(),
            file: unit.ctx.file,
            line,
            col,
            entry,
            item_allows: allows,
            calls: Vec::new(),
            sites: Vec::new(),
        });
        if self_ty.is_none() {
            let mut full = unit.ctx.path.clone();
            full.push(name.clone());
            self.graph.free_fns.entry(full.join("::")).or_default().push(id);
            self.graph.by_name.entry(name).or_default().push(id);
        } else if let Some(t) = self_ty {
            self.graph
                .methods
                .entry((t.to_string(), name))
                .or_default()
                .push(id);
        }
        let impl_path = self.impl_path.clone();
        let mut v = BodyVisitor {
            s: self,
            unit,
            uses: unit.uses.clone(),
            node: id,
            fn_name: display,
            self_ty: self_ty.map(str::to_string),
            in_async: is_async,
            on_owner: false,
            stmt_line: line,
            locals,
            depth: 0,
            local_bodies: HashMap::new(),
            impl_path,
        };
        v.visit_block(block);
    }
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Fn(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Const(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        _ => &[],
    }
}

const ROUTE_FNS: &[&str] = &[
    "get", "post", "put", "delete", "patch", "head", "options", "trace", "connect", "any", "on",
];

/// Methods whose closure argument runs on an owner (or another) thread, not
/// in the calling task: async context does not carry into it.
const OFF_TASK_METHODS: &[&str] = &[
    "run",
    "run_deadline",
    "run_keyed",
    "submit",
    "try_submit",
    "submit_timeout",
    "submit_async",
    "call",
    "call_deadline",
    "broadcast",
    "spawn",
    "spawn_scoped",
];

struct BodyVisitor<'s, 'a, 'u> {
    s: &'s mut Scanner<'a>,
    unit: &'u Unit,
    uses: UseMap,
    node: usize,
    fn_name: String,
    self_ty: Option<String>,
    in_async: bool,
    on_owner: bool,
    stmt_line: usize,
    locals: HashMap<String, String>,
    /// How deep the visit is in expressions; see [`MAX_DEPTH`].
    depth: usize,
    /// Locals bound to a closure or async block in this body
    /// (`let task = async move { .. };`): spawned or registered by name,
    /// they become entry points like the literal would.
    local_bodies: HashMap<String, Expr>,
    /// The enclosing `impl`'s type path as written, for `Self::`.
    impl_path: Option<Vec<String>>,
}

fn strip(mut e: &Expr) -> &Expr {
    loop {
        e = match e {
            Expr::Paren(p) => &p.expr,
            Expr::Group(g) => &g.expr,
            Expr::Try(t) => &t.expr,
            Expr::Reference(r) => &r.expr,
            Expr::Await(a) => &a.base,
            Expr::MethodCall(m)
                if matches!(
                    m.method.to_string().as_str(),
                    "unwrap" | "expect" | "clone" | "as_ref"
                ) =>
            {
                &m.receiver
            }
            _ => return e,
        };
    }
}

impl BodyVisitor<'_, '_, '_> {
    fn normalize(&self, segs: &[String]) -> Option<Vec<String>> {
        let module = &self.unit.ctx.path;
        match segs.first().map(String::as_str) {
            Some("crate") => {
                let mut v = vec![module[0].clone()];
                v.extend_from_slice(&segs[1..]);
                Some(v)
            }
            Some("self") => {
                let mut v = module.clone();
                v.extend_from_slice(&segs[1..]);
                Some(v)
            }
            Some("super") => {
                let mut v = module.clone();
                let mut i = 0;
                while segs.get(i).map(String::as_str) == Some("super") {
                    if v.len() > 1 {
                        v.pop();
                    }
                    i += 1;
                }
                v.extend_from_slice(&segs[i..]);
                Some(v)
            }
            _ => None,
        }
    }

    /// The path with its first segment expanded through `use`, leading
    /// `crate`/`self`/`super` dropped: what configured patterns match.
    fn expand(&self, segs: &[String]) -> Vec<String> {
        let mut v = match self.uses.names.get(&segs[0]) {
            Some(exp) => {
                let mut v = exp.clone();
                v.extend_from_slice(&segs[1..]);
                v
            }
            None => segs.to_vec(),
        };
        while matches!(v.first().map(String::as_str), Some("crate" | "self" | "super")) && v.len() > 1 {
            v.remove(0);
        }
        v
    }

    fn callee_for_path(&self, segs: &[String]) -> Callee {
        let module = &self.unit.ctx.path;
        let join = |v: Vec<String>| v.join("::");
        let mut candidates = Vec::new();
        let mut full = segs.to_vec();
        if let Some(exp) = self.uses.names.get(&segs[0]) {
            full = exp.clone();
            full.extend_from_slice(&segs[1..]);
        }
        if let Some(abs) = self.normalize(&full) {
            candidates.push(join(abs));
        } else {
            let mut rel = module.clone();
            rel.extend_from_slice(&full);
            candidates.push(join(rel));
            let mut root = vec![module[0].clone()];
            root.extend_from_slice(&full);
            candidates.push(join(root));
            candidates.push(join(full.clone()));
            for g in &self.uses.globs {
                let base = self.normalize(g).unwrap_or_else(|| {
                    let mut r = module.clone();
                    r.extend_from_slice(g);
                    r
                });
                let mut c = base;
                c.extend_from_slice(segs);
                candidates.push(join(c));
            }
        }
        let type_method = if full.len() >= 2 {
            let ty = &full[full.len() - 2];
            let ty = if ty == "Self" {
                self.self_ty.clone().unwrap_or_default()
            } else {
                ty.clone()
            };
            is_ident_start_upper(&ty).then(|| (ty, full[full.len() - 1].clone()))
        } else {
            None
        };
        let bare = (segs.len() == 1).then(|| segs[0].clone());
        Callee::Path {
            candidates,
            type_method,
            bare,
        }
    }

    fn push_call(&mut self, call: Call) {
        self.s.graph.nodes[self.node].calls.push(call);
    }

    fn push_site(&mut self, kind: SiteKind, span: Span) {
        let (line, col) = line_col(span);
        let stmt_line = self.stmt_line;
        self.s.graph.nodes[self.node].sites.push(Site {
            kind,
            line,
            col,
            stmt_line,
        });
    }

    fn path_call(&mut self, path: &syn::Path, span: Span, kind: CallKind) {
        let segs = path_segs(path);
        if segs.is_empty() {
            return;
        }
        let (line, col) = line_col(span);
        let callee = self.callee_for_path(&segs);
        let expanded = match (&self.impl_path, segs.len() > 1 && segs[0] == "Self") {
            (Some(ty), true) => {
                let mut full = ty.clone();
                full.extend_from_slice(&segs[1..]);
                self.expand(&full)
            }
            _ => self.glob_expand(&segs).unwrap_or_else(|| self.expand(&segs)),
        }
        .join("::");
        self.push_call(Call {
            callee,
            kind,
            written: segs.join("::"),
            expanded,
            line,
            col,
            stmt_line: self.stmt_line,
            in_async: self.in_async,
            on_owner: self.on_owner,
            note: String::new(),
        });
    }

    /// Visits a closure that runs off the calling task: not in async
    /// context, and on an owner thread when `on_owner`.
    fn visit_off_task(&mut self, e: &Expr, on_owner: bool) {
        let saved = std::mem::replace(&mut self.in_async, false);
        let owner_now = self.on_owner || on_owner;
        let saved_owner = std::mem::replace(&mut self.on_owner, owner_now);
        self.visit_expr(e);
        self.in_async = saved;
        self.on_owner = saved_owner;
    }

    /// A closure or async block becomes a node of its own, an entry point.
    fn closure_node(&mut self, e: &Expr, entry: EntryKind, what: &str, in_async: bool) {
        let (line, col) = line_col(e.span());
        let id = self.s.graph.nodes.len();
        let name = format!("{what} in {}", self.fn_name);
        let allows = self.s.graph.nodes[self.node].item_allows.clone();
        let qname = self.s.graph.nodes[self.node].qname.clone();
        self.s.graph.nodes.push(Node {
            name,
            qname,
            file: self.unit.ctx.file,
            line,
            col,
            entry: Some(entry),
            item_allows: allows,
            calls: Vec::new(),
            sites: Vec::new(),
        });
        self.push_call(Call {
            callee: Callee::Node(id),
            kind: CallKind::Closure,
            written: String::new(),
            expanded: String::new(),
            line,
            col,
            stmt_line: self.stmt_line,
            in_async: self.in_async,
            on_owner: self.on_owner,
            note: String::new(),
        });
        let saved_node = std::mem::replace(&mut self.node, id);
        let saved_async = std::mem::replace(&mut self.in_async, in_async);
        let saved_owner = std::mem::replace(&mut self.on_owner, false);
        let saved_locals = self.locals.clone();
        if let Expr::Closure(c) = e {
            self.closure_params(c);
            self.in_async = in_async || c.asyncness.is_some();
            self.visit_expr(&c.body);
        } else {
            self.visit_expr(e);
        }
        self.locals = saved_locals;
        self.in_async = saved_async;
        self.on_owner = saved_owner;
        self.node = saved_node;
    }

    fn closure_params(&mut self, c: &syn::ExprClosure) {
        for p in &c.inputs {
            let t = match p {
                Pat::Type(pt) => type_name(&pt.ty).unwrap_or_default(),
                _ => String::new(),
            };
            let mut ids = Vec::new();
            pat_idents(p, &mut ids);
            for id in ids {
                self.locals.insert(id, t.clone());
            }
        }
    }

    /// The type of an expression, when syntax names it.
    fn expr_type(&self, e: &Expr) -> Option<String> {
        match strip(e) {
            Expr::Path(p) => {
                let segs = path_segs(&p.path);
                if segs.len() == 1 {
                    match self.locals.get(&segs[0]) {
                        Some(t) => Some(t.clone()).filter(|t| !t.is_empty()),
                        // A unit struct's value: `let s = Svc;`.
                        None if segs[0] == "Self" => self.self_ty.clone(),
                        None => is_ident_start_upper(&segs[0]).then(|| segs[0].clone()),
                    }
                } else {
                    None
                }
            }
            Expr::Struct(s) => s.path.segments.last().map(|s| {
                let n = s.ident.to_string();
                if n == "Self" {
                    self.self_ty.clone().unwrap_or(n)
                } else {
                    n
                }
            }),
            Expr::Field(f) => {
                let base = self.expr_type(&f.base)?;
                let member = match &f.member {
                    syn::Member::Named(i) => i.to_string(),
                    syn::Member::Unnamed(i) => i.index.to_string(),
                };
                self.s.fields.get(&(base, member)).cloned()
            }
            Expr::MethodCall(m) => {
                let name = m.method.to_string();
                match name.as_str() {
                    "lock" | "read" | "write" | "borrow" | "borrow_mut" | "get_ref" | "deref" => {
                        self.expr_type(&m.receiver)
                    }
                    "submit" | "try_submit" | "submit_timeout" | "submit_async" => Some("Ticket".into()),
                    "pick" | "worker" | "for_key" => Some("PinnedWorker".into()),
                    "to" | "keyed" => {
                        let r = self.expr_type(&m.receiver)?;
                        (r == "Pool").then(|| "Route".into())
                    }
                    "spawn" => match self.expr_type(&m.receiver)?.as_str() {
                        "PoolBuilder" => Some("Pool".into()),
                        "Builder" => Some("PinnedWorker".into()),
                        _ => None,
                    },
                    _ => {
                        // A builder method returns the builder.
                        let r = self.expr_type(&m.receiver)?;
                        (r == "PoolBuilder" || r == "Builder").then_some(r)
                    }
                }
            }
            Expr::Call(c) => {
                let Expr::Path(p) = strip(&c.func) else {
                    return None;
                };
                let segs = self.expand(&path_segs(&p.path));
                let last = segs.last()?.as_str();
                let ty = segs.len().checked_sub(2).map(|i| segs[i].as_str());
                match (ty, last) {
                    (Some("Arc" | "Rc" | "Box" | "Mutex" | "RwLock"), "new" | "clone")
                    | (None, "Some" | "Ok") => c.args.first().and_then(|a| self.expr_type(a)),
                    (Some("PinnedWorker"), "builder") => Some("Builder".into()),
                    (Some("Pool"), "builder") => Some("PoolBuilder".into()),
                    (Some(t), _) if is_ident_start_upper(t) => {
                        if t == "Self" {
                            self.self_ty.clone()
                        } else {
                            Some(t.to_string())
                        }
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// What a `.spawn(..)` method call's receiver chain starts with, if
    /// that makes it an owner thread.
    fn spawn_root(&self, recv: &Expr) -> Option<String> {
        let mut e = strip(recv);
        loop {
            match e {
                Expr::MethodCall(m) => e = strip(&m.receiver),
                Expr::Call(c) => {
                    let Expr::Path(p) = strip(&c.func) else {
                        return None;
                    };
                    let segs = self.expand(&path_segs(&p.path));
                    let n = segs.len();
                    if n >= 2 {
                        let (t, f) = (segs[n - 2].as_str(), segs[n - 1].as_str());
                        return match (t, f) {
                            ("PinnedWorker", "builder") => Some("PinnedWorker::builder()..spawn".into()),
                            ("Pool", "builder") => Some("Pool::builder(..)..spawn".into()),
                            ("Builder", "new" | "default") if segs.iter().any(|s| s == "thread") => {
                                Some("thread::Builder::new()..spawn".into())
                            }
                            ("Builder", "new" | "default") => Some("Builder::new()..spawn".into()),
                            _ => None,
                        };
                    }
                    return None;
                }
                _ => {
                    return match self.expr_type(e)?.as_str() {
                        "Builder" => Some("Builder..spawn".into()),
                        "PoolBuilder" => Some("Pool::builder(..)..spawn".into()),
                        _ => None,
                    }
                }
            }
        }
    }

    /// A bare name that no `use`, local or item of this module explains,
    /// read through a glob import: the crate module the glob names when it
    /// defines the name, else the one glob that leads out of the crate.
    fn glob_expand(&self, segs: &[String]) -> Option<Vec<String>> {
        let [name] = segs else { return None };
        let module = &self.unit.ctx.path;
        let defines = |m: &[String]| {
            self.s
                .module_items
                .get(&m.join("::"))
                .map(|items| items.contains(name))
        };
        if self.uses.globs.is_empty()
            || self.uses.names.contains_key(name)
            || self.locals.contains_key(name)
            || defines(module) == Some(true)
        {
            return None;
        }
        let mut outside = Vec::new();
        for g in &self.uses.globs {
            let mut rel = module.clone();
            rel.extend_from_slice(g);
            let mut root = vec![module[0].clone()];
            root.extend_from_slice(g);
            let tries: Vec<Vec<String>> = match self.normalize(g) {
                Some(abs) => vec![abs],
                None => vec![rel, root],
            };
            let mut in_crate = false;
            for t in &tries {
                match defines(t) {
                    Some(true) => {
                        let mut full = g.clone();
                        full.push(name.clone());
                        return Some(self.expand(&full));
                    }
                    Some(false) => in_crate = true,
                    None => {}
                }
            }
            if !in_crate {
                outside.push(g);
            }
        }
        match outside.as_slice() {
            [g] => {
                let mut full = (*g).clone();
                full.push(name.clone());
                Some(self.expand(&full))
            }
            _ => None,
        }
    }

    /// The closure or async block an argument is, directly or through a
    /// local bound to one in this body.
    fn body_arg(&self, a: &Expr) -> Option<Expr> {
        match strip(a) {
            e @ (Expr::Closure(_) | Expr::Async(_)) => Some(e.clone()),
            Expr::Path(p) if p.path.segments.len() == 1 && p.qself.is_none() => self
                .local_bodies
                .get(&p.path.segments[0].ident.to_string())
                .cloned(),
            _ => None,
        }
    }

    /// Registers handlers found in a router call's arguments.
    fn route_args(&mut self, e: &Expr) {
        match e {
            Expr::Call(c) => {
                if let Expr::Path(p) = &*c.func {
                    let name = p
                        .path
                        .segments
                        .last()
                        .map(|s| s.ident.to_string())
                        .unwrap_or_default();
                    if ROUTE_FNS.contains(&name.as_str()) {
                        if let Some(h) = c.args.last() {
                            self.handler_arg(h, &format!("{name}(..)"));
                        }
                        for a in c.args.iter().take(c.args.len().saturating_sub(1)) {
                            self.visit_expr(a);
                        }
                        return;
                    }
                }
                self.visit_expr(e);
            }
            Expr::MethodCall(m) => {
                let name = m.method.to_string();
                if ROUTE_FNS.contains(&name.as_str()) || name == "to" {
                    self.route_args(&m.receiver);
                    if let Some(h) = m.args.last() {
                        self.handler_arg(h, &format!(".{name}(..)"));
                    }
                    return;
                }
                self.visit_expr(e);
            }
            _ => self.visit_expr(e),
        }
    }

    fn handler_arg(&mut self, h: &Expr, how: &str) {
        if let Some(body @ Expr::Closure(_)) = self.body_arg(h) {
            self.closure_node(
                &body,
                EntryKind::ClosureHandler(how.to_string()),
                "closure handler",
                false,
            );
            return;
        }
        match strip(h) {
            Expr::Path(p) => {
                let segs = path_segs(&p.path);
                let (line, col) = line_col(p.span());
                let callee = self.callee_for_path(&segs);
                self.push_call(Call {
                    callee,
                    kind: CallKind::Handler,
                    written: segs.join("::"),
                    expanded: String::new(),
                    line,
                    col,
                    stmt_line: self.stmt_line,
                    in_async: false,
                    on_owner: false,
                    note: how.to_string(),
                });
            }
            e @ Expr::Closure(_) => self.closure_node(
                e,
                EntryKind::ClosureHandler(how.to_string()),
                "closure handler",
                false,
            ),
            other => self.visit_expr(other),
        }
    }

    fn task_spawner(segs: &[String]) -> Option<&'static str> {
        let last = segs.last()?.as_str();
        let has = |s: &str| segs.iter().any(|x| x == s);
        match last {
            "spawn_blocking" => Some("spawn_blocking"),
            "spawn" | "spawn_local" if has("tokio") || has("task") || has("async_std") || has("smol") => {
                Some(if last == "spawn" {
                    "tokio::spawn"
                } else {
                    "spawn_local"
                })
            }
            _ => None,
        }
    }
}

impl<'ast> Visit<'ast> for BodyVisitor<'_, '_, '_> {
    fn visit_expr(&mut self, e: &'ast Expr) {
        if self.depth >= MAX_DEPTH {
            let file = self.unit.ctx.file;
            if self.s.too_deep.insert(file) {
                let (line, column) = line_col(e.span());
                self.s.problems.push(Problem {
                    file: Some(self.s.graph.files[file].path.clone()),
                    line: Some(line),
                    column: Some(column),
                    message: format!(
                        "expressions nest more than {MAX_DEPTH} levels deep here; the audit did not \
                         look inside, so this part of the file was not checked"
                    ),
                });
            }
            return;
        }
        self.depth += 1;
        visit::visit_expr(self, e);
        self.depth -= 1;
    }

    fn visit_item(&mut self, item: &'ast Item) {
        // Nested items are scanned as functions of their own.
        let unit = self.unit;
        if matches!(item, Item::Fn(_) | Item::Impl(_) | Item::Trait(_)) {
            if !self.s.include_tests && is_test_item(item_attrs(item)) {
                return;
            }
            self.s.scan_item(unit, item, None);
        } else if let Item::Use(u) = item {
            self.uses.add(&u.tree, &mut Vec::new());
        }
    }

    fn visit_stmt(&mut self, stmt: &'ast Stmt) {
        let saved = self.stmt_line;
        self.stmt_line = stmt.span().start().line;
        if let Stmt::Local(local) = stmt {
            let mut ids = Vec::new();
            pat_idents(&local.pat, &mut ids);
            let ty = match &local.pat {
                Pat::Type(pt) => type_name(&pt.ty),
                _ => None,
            }
            .or_else(|| local.init.as_ref().and_then(|i| self.expr_type(&i.expr)))
            .unwrap_or_default();
            for id in &ids {
                self.locals.insert(id.clone(), ty.clone());
                self.local_bodies.remove(id);
            }
            if let (Pat::Ident(pi), Some(init)) = (&local.pat, &local.init) {
                let e = strip(&init.expr);
                if matches!(e, Expr::Closure(_) | Expr::Async(_)) {
                    self.local_bodies.insert(pi.ident.to_string(), e.clone());
                }
            }
        }
        visit::visit_stmt(self, stmt);
        self.stmt_line = saved;
    }

    fn visit_expr_async(&mut self, e: &'ast syn::ExprAsync) {
        let saved = std::mem::replace(&mut self.in_async, true);
        visit::visit_expr_async(self, e);
        self.in_async = saved;
    }

    fn visit_expr_closure(&mut self, c: &'ast syn::ExprClosure) {
        let saved_locals = self.locals.clone();
        self.closure_params(c);
        let saved = self.in_async;
        if c.asyncness.is_some() {
            self.in_async = true;
        }
        self.visit_expr(&c.body);
        self.in_async = saved;
        self.locals = saved_locals;
    }

    fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
        // A path in value position may be a function passed along (`map(f)`).
        if p.path.segments.len() > 1 || !self.locals.contains_key(&p.path.segments[0].ident.to_string()) {
            self.path_call(&p.path, p.span(), CallKind::FnRef);
        }
    }

    fn visit_expr_call(&mut self, c: &'ast syn::ExprCall) {
        let Expr::Path(p) = strip(&c.func) else {
            visit::visit_expr_call(self, c);
            return;
        };
        let segs = path_segs(&p.path);
        let expanded = self.expand(&segs);
        let n = expanded.len();
        let tail = |k: usize| {
            if n >= k {
                expanded[n - k..].join("::")
            } else {
                String::new()
            }
        };
        // Some(on_owner) when a closure argument runs off the task.
        let mut off_task = None;
        if tail(2) == "PinnedWorker::spawn" {
            self.push_site(SiteKind::Owner("PinnedWorker::spawn".into()), c.func.span());
            off_task = Some(true);
        } else if tail(2) == "thread::spawn" || tail(2) == "thread::scope" {
            if tail(2) == "thread::spawn" {
                self.push_site(SiteKind::Owner("std::thread::spawn".into()), c.func.span());
            }
            off_task = Some(false);
        }
        self.path_call(&p.path, c.func.span(), CallKind::PathCall);
        if let Some(spawner) = Self::task_spawner(&expanded) {
            for a in &c.args {
                if let Some(body) = self.body_arg(a) {
                    let blocking = spawner == "spawn_blocking";
                    let what = format!("closure passed to {spawner}");
                    self.closure_node(&body, EntryKind::Spawned(spawner.to_string()), &what, !blocking);
                } else {
                    self.visit_expr(a);
                }
            }
            return;
        }
        for a in &c.args {
            if let (Some(on_owner), Expr::Closure(_)) = (off_task, strip(a)) {
                self.visit_off_task(a, on_owner);
            } else {
                self.visit_expr(a);
            }
        }
    }

    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        let name = m.method.to_string();
        let span = m.method.span();
        let recv_ty = self.expr_type(&m.receiver);
        // A worker's closures run on its owner thread; a thread builder's
        // closure on a new plain thread.
        let mut owner_closure = true;
        if name == "spawn" || name == "spawn_scoped" {
            if let Some(what) = self.spawn_root(&m.receiver) {
                owner_closure = !what.starts_with("thread");
                self.push_site(SiteKind::Owner(what), span);
            } else {
                owner_closure = false;
            }
        }
        if self.in_async {
            let via_submit = matches!(strip(&m.receiver), Expr::MethodCall(r)
                if matches!(r.method.to_string().as_str(), "submit" | "try_submit" | "submit_timeout"));
            if matches!(name.as_str(), "run" | "run_deadline" | "run_keyed")
                || (matches!(name.as_str(), "wait" | "wait_timeout" | "wait_deadline")
                    && (via_submit || recv_ty.as_deref() == Some("Ticket")))
            {
                self.push_site(
                    SiteKind::Blocking {
                        method: name.clone(),
                        recv_ty: recv_ty.clone(),
                        via_submit,
                    },
                    span,
                );
            }
        }
        let (line, col) = line_col(span);
        self.push_call(Call {
            callee: Callee::Method {
                ty: recv_ty,
                name: name.clone(),
            },
            kind: CallKind::Method,
            written: name.clone(),
            expanded: String::new(),
            line,
            col,
            stmt_line: self.stmt_line,
            in_async: self.in_async,
            on_owner: self.on_owner,
            note: String::new(),
        });
        self.visit_expr(&m.receiver);
        if name == "route" || name == "service" || name == "fallback" || name == "default_service" {
            if name == "fallback" {
                if let Some(h) = m.args.first() {
                    self.handler_arg(h, ".fallback(..)");
                }
                return;
            }
            for a in &m.args {
                self.route_args(a);
            }
            return;
        }
        if let Some(spawner) = match name.as_str() {
            "spawn_blocking" => Some("spawn_blocking"),
            "spawn" | "spawn_local"
                if m.args
                    .iter()
                    .any(|a| matches!(self.body_arg(a), Some(Expr::Async(_)))) =>
            {
                Some(".spawn")
            }
            _ => None,
        } {
            for a in &m.args {
                if let Some(body) = self.body_arg(a) {
                    let what = format!("closure passed to {spawner}");
                    let blocking = spawner == "spawn_blocking";
                    self.closure_node(&body, EntryKind::Spawned(spawner.to_string()), &what, !blocking);
                } else {
                    self.visit_expr(a);
                }
            }
            return;
        }
        let off_task = OFF_TASK_METHODS.contains(&name.as_str());
        for a in &m.args {
            if off_task && matches!(strip(a), Expr::Closure(_)) {
                self.visit_off_task(a, owner_closure);
            } else {
                self.visit_expr(a);
            }
        }
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Most macros take comma-separated expressions (format!, vec!,
        // assert!): parse and walk those; the rest stay unseen.
        if let Ok(exprs) = mac.parse_body_with(Punctuated::<Expr, syn::Token![,]>::parse_terminated) {
            for e in &exprs {
                self.visit_expr(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::line_comments;

    fn comment_lines(src: &str) -> Vec<usize> {
        line_comments(src).into_iter().map(|(l, _)| l).collect()
    }

    #[test]
    fn comments_outside_literals_only() {
        let src = "let a = \"// no\"; // yes\nlet b = r#\"\n// no\n\"#;\nlet c = '/'; // yes\n/* // no */ x\nfn f<'a>(x: &'a str) {} // yes\nlet d = b\"//\"; let e = '\\''; // yes\n";
        assert_eq!(comment_lines(src), [1, 5, 7, 8]);
    }

    #[test]
    fn only_cfg_test_and_all_test_are_test_only() {
        let test_only = |src: &str| {
            let f: syn::File = syn::parse_str(&format!("{src} fn f() {{}}")).unwrap();
            let syn::Item::Fn(f) = &f.items[0] else {
                unreachable!()
            };
            super::is_test_item(&f.attrs)
        };
        assert!(test_only("#[cfg(test)]"));
        assert!(test_only("#[cfg(all(unix, test))]"));
        assert!(test_only("#[test]"));
        assert!(!test_only("#[cfg(any(test, feature = \"mock\"))]"));
        assert!(!test_only("#[cfg(feature = \"test-util\")]"));
        assert!(!test_only("#[cfg(not(test))]"));
        assert!(!test_only("#[cfg(all(not(test), unix))]"));
    }

    #[test]
    fn nesting_past_the_limit_is_found_without_recursion() {
        let n = super::MAX_DEPTH + 10;
        let src = format!("fn f() {{ let _ = {}1{}; }}", "(".repeat(n), ")".repeat(n));
        let (depth, line, _) = super::too_deep(&src).expect("too deep");
        assert_eq!((depth, line), (super::MAX_DEPTH + 1, 1));
        assert!(super::too_deep("fn f() { ((1)); }").is_none());
    }

    #[test]
    fn offsets_are_bytes_in_the_line() {
        assert_eq!(line_comments("x\n  // c"), [(2, 2)]);
    }
}
