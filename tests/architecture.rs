//! The module graph of `src/`, read from the code: no import cycle among modules, and no arrow
//! from a lower layer to a higher one.
//!
//! How the graph is read: every file under `src/` is a module (`x/mod.rs` is `x`). Each path in
//! a `use` item or in code that starts with `crate::`, `super::`, `self::`, the crate's own name
//! (in `main.rs`) or a child module's name is resolved to the longest module it names; that gives
//! an arrow from the file to that module. A parent's arrows to its own children (declaring them,
//! re-exporting them) are ownership, not dependency, and are left out. Code under `#[cfg(test)]`
//! is left out: tests may reach anywhere. Paths inside macro arguments are not read (they are
//! token streams); the `use` items above them are.
//!
//! The layers are written down in [`LAYERS`]: a module may import from its own layer or below,
//! never above, and the floor imports nothing of ours. A new module must be given a layer here,
//! which is where its place in the architecture is decided.
//!
//! Run alone: `cargo test --test architecture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The layers, lowest first. A top-level module (a file `src/x.rs` or a folder `src/x/`) sits
/// in one; its submodules share it.
const LAYERS: &[(&str, &[&str])] = &[
    // Shared vocabulary: the engine's wire types, the LogEntry schema, ECS helpers, file
    // helpers, the one backoff. Everything may import these; they import nothing of ours.
    (
        "floor",
        &[
            "entry",
            "container_id",
            "protocol",
            "ecs",
            "fsutil",
            "backoff",
        ],
    ),
    // Counters everybody reports into, and the byte-level formats and files.
    ("core", &["metrics", "frame", "fifo", "store"]),
    // Moving bytes: FIFO to store, store to `docker logs`, the run table, retention.
    (
        "flow",
        &["pipeline", "replay", "readlogs", "runs", "retention"],
    ),
    // Store to Elasticsearch.
    ("shipping", &["shipper"]),
    // The engine's events (shipped by a shipper); the log-opt table that builds shipper
    // options; plugin-wide settings from the environment. One layer: settings reads the log-opt
    // table and the events' value types (filters, format), and the events service takes its
    // settings from there. Among files they stay acyclic (the cycle test above holds that).
    ("sources", &["events", "options", "settings"]),
    // The one place that wires the parts together.
    ("wiring", &["plugin"]),
    // The HTTP API the engine calls, served over the wired plugin.
    ("api", &["api"]),
    // The binary and the crate root.
    ("entry points", &["main", "lib"]),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A module's path as segments (`["store", "segment"]`), from its file under `src/`.
fn module_of(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src_dir()).expect("a file under src/");
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().map(String::as_str) == Some("mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ readable")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| match &a.meta {
        syn::Meta::List(list) if list.path.is_ident("cfg") => {
            let text = list.tokens.to_string();
            text.contains("test") && !text.contains("not")
        }
        _ => false,
    })
}

/// Everything one file refers to: paths from `use` trees and from code, and the child modules
/// it declares under `#[cfg(test)]` (which are test code, left out of the graph).
#[derive(Default)]
struct Refs {
    paths: Vec<Vec<String>>,
    test_children: Vec<String>,
    /// `pub use` items: the name they are seen by here, and the path they stand for.
    reexports: BTreeMap<String, Vec<String>>,
}

impl Refs {
    /// The leaves of a `use` tree: the name each is seen by, and the path it stands for.
    fn use_tree(
        prefix: &mut Vec<String>,
        tree: &syn::UseTree,
        out: &mut Vec<(String, Vec<String>)>,
    ) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                Self::use_tree(prefix, &p.tree, out);
                prefix.pop();
            }
            syn::UseTree::Name(syn::UseName { ident })
            | syn::UseTree::Rename(syn::UseRename { ident, .. }) => {
                let seen = match tree {
                    syn::UseTree::Rename(r) => r.rename.to_string(),
                    _ => ident.to_string(),
                };
                let mut path = prefix.clone();
                if ident != "self" {
                    path.push(ident.to_string());
                }
                out.push((seen, path));
            }
            syn::UseTree::Glob(_) => out.push(("*".to_owned(), prefix.clone())),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    Self::use_tree(prefix, item, out);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Refs {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Type(t) => &t.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if is_cfg_test(attrs) {
            if let syn::Item::Mod(m) = item {
                if m.content.is_none() {
                    self.test_children.push(m.ident.to_string());
                }
            }
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut leaves = Vec::new();
        Refs::use_tree(&mut Vec::new(), &item.tree, &mut leaves);
        let public = !matches!(item.vis, syn::Visibility::Inherited);
        for (seen, path) in leaves {
            if public {
                self.reexports.insert(seen, path.clone());
            }
            self.paths.push(path);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.paths
            .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
}

/// The module graph: each module's file-level arrows to other modules.
struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
}

fn name(parts: &[String]) -> String {
    if parts.is_empty() {
        "lib".to_owned()
    } else {
        parts.join("::")
    }
}

/// A path as written in `base` made absolute (segments from the crate root), or None when it
/// names nothing of ours (std, an external crate, a local item).
fn absolute(
    base: &[String],
    path: &[String],
    known: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut rest = path;
    let mut at: Vec<String> = match first.as_str() {
        "crate" | "es_logging_plugin" => {
            rest = &rest[1..];
            Vec::new()
        }
        "self" => {
            rest = &rest[1..];
            base.to_vec()
        }
        "super" => {
            let mut at = base.to_vec();
            while rest.first().map(String::as_str) == Some("super") {
                at.pop();
                rest = &rest[1..];
            }
            at
        }
        child => {
            let mut candidate = base.to_vec();
            candidate.push(child.to_owned());
            if !known.contains(&candidate) {
                return None;
            }
            base.to_vec()
        }
    };
    at.extend(rest.iter().cloned());
    Some(at)
}

/// The module an absolute path lands in: the longest module it names, followed through that
/// module's `pub use` when the next segment is a re-exported name (a folder's `mod.rs` that
/// re-exports a child's type must not hide the arrow to the child).
fn resolve(
    at: Vec<String>,
    modules: &BTreeMap<Vec<String>, Refs>,
    depth: usize,
) -> Option<Vec<String>> {
    let k = (1..=at.len())
        .rev()
        .find(|&k| modules.contains_key(&at[..k]))?;
    let module = at[..k].to_vec();
    if depth < 8 {
        if let Some(next) = at.get(k) {
            if let Some(path) = modules[&module].reexports.get(next) {
                let known: BTreeSet<Vec<String>> = modules.keys().cloned().collect();
                if let Some(mut again) = absolute(&module, path, &known) {
                    again.extend(at[k + 1..].iter().cloned());
                    if again != at {
                        return resolve(again, modules, depth + 1).or(Some(module));
                    }
                }
            }
        }
    }
    Some(module)
}

fn read_graph() -> Graph {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut modules: BTreeMap<Vec<String>, Refs> = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a readable source file");
        let ast = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
        let mut refs = Refs::default();
        refs.visit_file(&ast);
        let mut module = module_of(file);
        if module == ["lib"] {
            module.clear();
        }
        modules.insert(module, refs);
    }
    // Modules declared under #[cfg(test)], and everything below them, are test code.
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    for (module, refs) in &modules {
        for child in &refs.test_children {
            let mut path = if module == &["main".to_owned()] {
                Vec::new()
            } else {
                module.clone()
            };
            path.push(child.clone());
            test_only.insert(path);
        }
    }
    let is_test = |m: &Vec<String>| test_only.iter().any(|t| m.starts_with(t));
    let known: BTreeSet<Vec<String>> = modules.keys().cloned().collect();

    let mut edges = BTreeMap::new();
    for (module, refs) in &modules {
        if is_test(module) {
            continue;
        }
        // main.rs is the binary's root: its `crate::` is the binary, the library comes in by name.
        let base: Vec<String> = if module == &["main".to_owned()] {
            Vec::new()
        } else {
            module.clone()
        };
        let mut targets = BTreeSet::new();
        for path in &refs.paths {
            let Some(at) = absolute(&base, path, &known) else {
                continue;
            };
            let Some(target) = resolve(at, &modules, 0) else {
                continue;
            };
            if &target == module || target.starts_with(module) || is_test(&target) {
                continue;
            }
            // The binary and the library root are entry points, not things one imports.
            if module == &["main".to_owned()] && target.is_empty() {
                continue;
            }
            targets.insert(name(&target));
        }
        edges.insert(name(module), targets);
    }
    Graph { edges }
}

/// The strongly connected components with more than one module: the import cycles.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.edges.keys() {
        if !tarjan.index.contains_key(v.as_str()) {
            tarjan.visit(v);
        }
    }
    tarjan.found
}

fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    let top = module.split("::").next().unwrap_or(module);
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, (_, members))| members.contains(&top))
        .map(|(i, (layer, _))| (i, *layer))
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let graph = read_graph();
    let found = cycles(&graph);
    let shown: Vec<String> = found
        .iter()
        .map(|c| {
            let arrows: Vec<String> = c
                .iter()
                .flat_map(|m| {
                    graph.edges[m]
                        .iter()
                        .filter(|t| c.contains(t))
                        .map(move |t| format!("{m} -> {t}"))
                })
                .collect();
            arrows.join(", ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles among src/ modules:\n  {}",
        shown.join("\n  ")
    );
}

#[test]
fn every_arrow_points_to_the_same_layer_or_below_and_the_floor_imports_nothing() {
    let graph = read_graph();
    let mut wrong = Vec::new();
    for (module, targets) in &graph.edges {
        let Some((from, from_name)) = layer_of(module) else {
            wrong.push(format!(
                "{module} has no layer: give it one in LAYERS (tests/architecture.rs)"
            ));
            continue;
        };
        for target in targets {
            let Some((to, to_name)) = layer_of(target) else {
                continue; // reported as the module without a layer
            };
            if to > from {
                wrong.push(format!(
                    "{module} ({from_name}) -> {target} ({to_name}): an arrow up a layer"
                ));
            } else if from == 0 && module.split("::").next() != target.split("::").next() {
                wrong.push(format!(
                    "{module} is in the floor but imports {target}: the floor imports nothing of ours"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The reader itself: a cycle written into a scratch tree is found, so a green run above means
/// the graph was read, not that nothing was.
#[test]
fn the_graph_reader_sees_the_arrows_it_should() {
    let graph = read_graph();
    // Facts of the layout that must hold for the reader to be working at all.
    assert!(
        graph
            .edges
            .get("pipeline")
            .is_some_and(|t| t.contains("store")),
        "pipeline -> store not seen: {:?}",
        graph.edges.get("pipeline")
    );
    assert!(
        graph.edges.get("plugin").is_some_and(|t| t.len() >= 5),
        "plugin wires at least five parts: {:?}",
        graph.edges.get("plugin")
    );
    // `plugin` names `crate::store::Stores`, which `store/mod.rs` re-exports from
    // `store/stores.rs`: the arrow must land on the file that defines it.
    assert!(
        graph
            .edges
            .get("plugin")
            .is_some_and(|t| t.contains("store::stores")),
        "re-export not followed: {:?}",
        graph.edges.get("plugin")
    );
    assert!(graph.edges.len() > 40, "{} modules read", graph.edges.len());
    let synthetic = Graph {
        edges: [
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a"]),
            ("d", vec!["a"]),
        ]
        .into_iter()
        .map(|(m, t)| (m.to_owned(), t.into_iter().map(str::to_owned).collect()))
        .collect(),
    };
    assert_eq!(cycles(&synthetic), vec![vec!["a", "b", "c"]]);
}
