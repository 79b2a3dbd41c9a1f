//! Keeps `docs/DIAGRAMS.md` true: every type, field, variant, method, module, command, flag, RPC
//! and message its Mermaid diagrams name must be in the workspace's Rust sources (`*/src/`) or
//! in `proto/lbsync/v1/*.proto`. A failure names what is gone and the line of the file that
//! uses it; the conventions the diagrams follow are in the file itself.
//!
//! The sources are read line by line, relying on rustfmt's layout: items start at column 0 and
//! their blocks end at a `}` at column 0; fields, variants and methods are indented 4 spaces.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Names from std and other crates that a diagram may mention as a type.
const EXTERNAL: &[&str] = &["PathBuf", "HashMap", "OwnedSemaphorePermit", "ChunkData"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proto/ is inside the workspace")
        .to_path_buf()
}

/// What the sources define.
#[derive(Default)]
struct Sources {
    /// struct, enum, trait and type names.
    types: HashSet<String>,
    traits: HashSet<String>,
    enums: HashSet<String>,
    /// Type or trait -> the fns of its impl blocks (or of the trait's body).
    methods: HashMap<String, HashSet<String>>,
    /// (trait, type) for every `impl Trait for Type`.
    trait_impls: HashSet<(String, String)>,
    fields: HashMap<String, HashSet<String>>,
    variants: HashMap<String, HashSet<String>>,
    /// The fields of the clap types (`derive(Parser | Subcommand | Args)`): the options.
    flags: HashSet<String>,
    /// Module (file stem) -> its top-level fns.
    modules: HashMap<String, HashSet<String>>,
    fns: HashSet<String>,
    rpcs: HashSet<String>,
    messages: HashSet<String>,
    /// The directories that hold a crate (`namespace` blocks are named after them).
    crates: HashSet<String>,
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// The leading identifier of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// `s` without a leading `pub`, `pub(crate)`, `pub(super)` or `pub(in ..)`.
fn strip_vis(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix("pub(") {
        return rest.find(')').map_or(s, |i| rest[i + 1..].trim_start());
    }
    s.strip_prefix("pub ").unwrap_or(s)
}

/// The name of the fn a (trimmed) line declares.
fn fn_name(line: &str) -> Option<&str> {
    let mut s = strip_vis(line);
    loop {
        let before = s;
        for q in ["const ", "async ", "unsafe ", "extern \"C\" "] {
            s = s.strip_prefix(q).unwrap_or(s);
        }
        if s == before {
            break;
        }
    }
    let name = ident(s.strip_prefix("fn ")?);
    (!name.is_empty()).then_some(name)
}

/// The field a (trimmed) line of a struct or struct-like variant declares.
fn field_name(line: &str) -> Option<&str> {
    let s = strip_vis(line);
    let name = ident(s);
    let rest = &s[name.len()..];
    (!name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && rest.starts_with(':')
        && !rest.starts_with("::"))
    .then_some(name)
}

/// The last path segment of a type, without generics or references.
fn type_name(s: &str) -> String {
    let s = s.trim().trim_start_matches('&').trim_start_matches("dyn ");
    let path = &s[..s.find(['<', ' ', '{', '(']).unwrap_or(s.len())];
    path.rsplit("::").next().unwrap_or(path).to_owned()
}

/// `(trait, self type)` of an impl header (the text after `impl`).
fn impl_header(rest: &str) -> (Option<String>, String) {
    let mut s = rest.trim();
    if s.starts_with('<') {
        let mut depth = 0;
        for (i, c) in s.char_indices() {
            match c {
                '<' => depth += 1,
                '>' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                s = s[i + 1..].trim_start();
                break;
            }
        }
    }
    let s = s.trim_end_matches('{').trim();
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            _ => {}
        }
        if depth == 0 && s[i..].starts_with(" for ") {
            return (Some(type_name(&s[..i])), type_name(&s[i + 5..]));
        }
    }
    (None, type_name(s))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || ["target", "node_modules", "tests"].contains(&name.as_str()) {
            continue;
        }
        if p.is_dir() {
            rust_files(&p, out);
        } else if name.ends_with(".rs") && name != "tests.rs" {
            out.push(p);
        }
    }
}

impl Sources {
    fn read(root: &Path) -> Sources {
        let mut src = Sources::default();
        let mut files = Vec::new();
        for e in fs::read_dir(root).expect("reading the workspace").flatten() {
            let dir = e.path();
            if dir.join("Cargo.toml").is_file() {
                src.crates
                    .insert(e.file_name().to_string_lossy().into_owned());
                rust_files(&dir.join("src"), &mut files);
            }
        }
        assert!(
            files.len() > 20,
            "found only {} Rust files under {}/*/src",
            files.len(),
            root.display()
        );
        // macro -> the fns it defines for the type it is given, when it defines one.
        let mut macros: HashMap<String, HashSet<String>> = HashMap::new();
        let mut invocations: Vec<(String, String)> = Vec::new();
        for f in &files {
            let text = fs::read_to_string(f).expect("reading a source file");
            let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            let module = if stem == "mod" {
                f.parent()
                    .and_then(|d| d.file_name())
                    .and_then(|d| d.to_str())
                    .unwrap_or_default()
            } else {
                stem
            };
            src.read_file(&text, module, &mut macros, &mut invocations);
        }
        for (mac, ty) in invocations {
            if let Some(fns) = macros.get(&mac) {
                src.types.insert(ty.clone());
                src.methods
                    .entry(ty)
                    .or_default()
                    .extend(fns.iter().cloned());
            }
        }
        let proto_dir = root.join("proto/lbsync/v1");
        for e in fs::read_dir(&proto_dir)
            .expect("reading proto/lbsync/v1")
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "proto") {
                let text = fs::read_to_string(e.path()).expect("reading a .proto file");
                for l in text.lines().map(str::trim) {
                    if let Some(r) = l.strip_prefix("rpc ") {
                        src.rpcs.insert(ident(r).to_owned());
                    } else if let Some(m) = l.strip_prefix("message ") {
                        src.messages.insert(ident(m).to_owned());
                    }
                }
            }
        }
        assert!(!src.rpcs.is_empty(), "no rpc in {}", proto_dir.display());
        src
    }

    fn read_file(
        &mut self,
        text: &str,
        module: &str,
        macros: &mut HashMap<String, HashSet<String>>,
        invocations: &mut Vec<(String, String)>,
    ) {
        let lines: Vec<&str> = text.lines().collect();
        let module_fns = self.modules.entry(module.to_owned()).or_default();
        for (i, &line) in lines.iter().enumerate() {
            if line.is_empty() || line.starts_with([' ', '\t', '/', '#', '}', ')']) {
                if let Some(f) = fn_name(line.trim()) {
                    self.fns.insert(f.to_owned());
                }
                continue;
            }
            // The item's block: up to the next `}` (or `)` of a macro call) at column 0.
            let end = if line.trim_end().ends_with(';') {
                i
            } else {
                (i + 1..lines.len())
                    .find(|&j| lines[j].starts_with(['}', ')']))
                    .unwrap_or(i)
            };
            let body = &lines[(i + 1).min(end)..end];
            let at4 = |l: &str| indent(l) == 4;
            let head = strip_vis(line);
            // Derived by clap: its fields (and its variants' fields) are command-line options.
            // (Its attributes and docs: the lines up to the blank one before it.)
            let attrs = lines[..i].iter().rev().take_while(|l| !l.trim().is_empty());
            let clap = attrs.filter(|l| l.starts_with("#[derive(")).any(|l| {
                ["Parser", "Subcommand", "Args"]
                    .iter()
                    .any(|d| l.contains(d))
            });
            if let Some(f) = fn_name(line) {
                self.fns.insert(f.to_owned());
                module_fns.insert(f.to_owned());
            } else if let Some(rest) = head.strip_prefix("struct ") {
                let name = ident(rest).to_owned();
                for l in body {
                    if let Some(f) = field_name(l.trim()) {
                        if clap {
                            self.flags.insert(f.to_owned());
                        }
                        if at4(l) {
                            self.fields
                                .entry(name.clone())
                                .or_default()
                                .insert(f.to_owned());
                        }
                    }
                }
                self.types.insert(name);
            } else if let Some(rest) = head.strip_prefix("enum ") {
                let name = ident(rest).to_owned();
                for l in body {
                    let t = l.trim();
                    if let Some(f) = field_name(t).filter(|_| clap) {
                        self.flags.insert(f.to_owned());
                    }
                    let v = ident(t);
                    if at4(l) && v.starts_with(|c: char| c.is_ascii_uppercase()) {
                        self.variants
                            .entry(name.clone())
                            .or_default()
                            .insert(v.to_owned());
                    }
                }
                self.enums.insert(name.clone());
                self.types.insert(name);
            } else if let Some(rest) = head.strip_prefix("trait ") {
                let name = ident(rest).to_owned();
                let fns = body
                    .iter()
                    .filter(|l| at4(l))
                    .filter_map(|l| fn_name(l.trim()));
                let fns: Vec<String> = fns.map(str::to_owned).collect();
                self.fns.extend(fns.iter().cloned());
                self.methods.entry(name.clone()).or_default().extend(fns);
                self.traits.insert(name.clone());
                self.types.insert(name);
            } else if let Some(rest) = head.strip_prefix("type ") {
                self.types.insert(ident(rest).to_owned());
            } else if let Some(rest) = head.strip_prefix("impl") {
                let (tr, ty) = impl_header(rest);
                let fns = body
                    .iter()
                    .filter(|l| at4(l))
                    .filter_map(|l| fn_name(l.trim()));
                let fns: Vec<String> = fns.map(str::to_owned).collect();
                self.fns.extend(fns.iter().cloned());
                self.methods.entry(ty.clone()).or_default().extend(fns);
                if let Some(tr) = tr {
                    self.trait_impls.insert((tr, ty));
                }
            } else if let Some(rest) = head.strip_prefix("macro_rules! ") {
                // A macro that defines a type: the fns it defines are that type's methods.
                if body.iter().any(|l| l.contains("struct $")) {
                    let fns = body.iter().filter_map(|l| fn_name(l.trim()));
                    macros
                        .entry(ident(rest).to_owned())
                        .or_default()
                        .extend(fns.map(str::to_owned));
                }
            } else if let Some(bang) = head.find("!(").filter(|&b| is_ident(&head[..b])) {
                // An item macro's call: the type it is given is its last bare identifier.
                let name = body
                    .iter()
                    .map(|l| l.trim().trim_end_matches(','))
                    .rfind(|l| is_ident(l));
                if let Some(name) = name {
                    invocations.push((head[..bang].to_owned(), name.to_owned()));
                }
            }
        }
    }

    /// The methods of `ty`: its impl blocks' fns and those of the traits it implements.
    fn has_method(&self, ty: &str, name: &str) -> bool {
        let own = self.methods.get(ty).is_some_and(|m| m.contains(name));
        own || self
            .trait_impls
            .iter()
            .any(|(tr, t)| t == ty && self.methods.get(tr).is_some_and(|m| m.contains(name)))
    }

    fn has_variant(&self, ty: &str, v: &str) -> bool {
        self.variants.get(ty).is_some_and(|s| s.contains(v))
    }
}

/// What a diagram attributes a method or fn to.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Type(&'a str),
    Module(&'a str),
    Any,
}

impl<'a> Owner<'a> {
    /// A type for a capitalised name, a module for a lowercase one.
    fn of(name: &'a str) -> Self {
        if name.starts_with(|c: char| c.is_ascii_uppercase()) {
            Owner::Type(name)
        } else {
            Owner::Module(name)
        }
    }
}

/// Collects what is wrong in `docs/DIAGRAMS.md`, each with its line.
struct Checker<'a> {
    src: &'a Sources,
    problems: Vec<String>,
}

impl Checker<'_> {
    fn gone(&mut self, line: usize, what: String) {
        self.problems
            .push(format!("docs/DIAGRAMS.md:{line}: {what}"));
    }

    fn check_type(&mut self, line: usize, name: &str) {
        if !self.src.types.contains(name) && !EXTERNAL.contains(&name) {
            self.gone(
                line,
                format!("`{name}` is no struct, enum, trait or type in */src/"),
            );
        }
    }

    fn check_module(&mut self, line: usize, name: &str) {
        if !self.src.modules.contains_key(name) {
            self.gone(
                line,
                format!("module `{name}` has no file {name}.rs in */src/"),
            );
        }
    }

    fn check_fn(&mut self, line: usize, owner: Owner<'_>, name: &str) {
        let why = match owner {
            Owner::Type(ty) if !self.src.has_method(ty, name) => format!(
                "`{ty}::{name}` is gone: no `fn {name}` in an `impl {ty}` (or a trait it implements)"
            ),
            Owner::Module(m) if !self.src.modules.get(m).is_some_and(|f| f.contains(name)) => {
                format!("`{m}::{name}` is gone: no top-level `fn {name}` in {m}.rs")
            }
            Owner::Any if !self.src.fns.contains(name) => {
                format!("`{name}()` is gone: no `fn {name}` in */src/")
            }
            _ => return,
        };
        self.gone(line, why);
    }

    fn check_field(&mut self, line: usize, ty: &str, name: &str) {
        if !self.src.fields.get(ty).is_some_and(|f| f.contains(name)) {
            self.gone(
                line,
                format!("`{ty}.{name}` is gone: `{ty}` has no field `{name}`"),
            );
        }
    }

    fn check_variant(&mut self, line: usize, ty: &str, v: &str) {
        if !self.src.has_variant(ty, v) {
            self.gone(
                line,
                format!("`{ty}::{v}` is gone: `{ty}` has no variant `{v}`"),
            );
        }
    }

    /// The names any text of a diagram may hold (see the module docs); `owner` is what a bare
    /// `name()` belongs to.
    fn check_text(&mut self, line: usize, text: &str, owner: Owner<'_>) {
        let words = |s: &str| -> Vec<(usize, String)> {
            let mut out = Vec::new();
            let mut start = None;
            for (i, c) in s.char_indices().chain([(s.len(), ' ')]) {
                let w = c.is_ascii_alphanumeric() || c == '_';
                match (w, start) {
                    (true, None) => start = Some(i),
                    (false, Some(b)) => {
                        out.push((b, s[b..i].to_owned()));
                        start = None;
                    }
                    _ => {}
                }
            }
            out
        };
        let ws = words(text);
        for (at, w) in &ws {
            let before = &text[..*at];
            let after = &text[at + w.len()..];
            let first = w.chars().next().unwrap_or(' ');
            if first.is_ascii_digit() {
                continue;
            }
            if before.ends_with("rpc ") {
                if !self.src.rpcs.contains(w) {
                    self.gone(
                        line,
                        format!("rpc `{w}` is gone from proto/lbsync/v1/*.proto"),
                    );
                }
                continue;
            }
            if before.ends_with("lbsync-client ") || before.ends_with("lbsync-server ") {
                let variant: String = w[..1].to_uppercase() + &w[1..];
                let found = self
                    .src
                    .variants
                    .iter()
                    .any(|(e, vs)| e.ends_with("Command") && vs.contains(&variant));
                if !found && first.is_ascii_lowercase() {
                    self.gone(
                        line,
                        format!("command `{w}` is gone: no `{variant}` in a `*Command` enum"),
                    );
                }
                continue;
            }
            if before.ends_with("--") && first.is_ascii_lowercase() {
                // A flag, dashes and all: `--read-only` is the field `read_only`.
                let flag: String = text[*at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                let field = flag.replace('-', "_");
                if !self.src.flags.contains(&field) {
                    self.gone(
                        line,
                        format!("flag `--{flag}` is gone: no field `{field}` in a clap type"),
                    );
                }
                continue;
            }
            if before.ends_with('-') && !before.ends_with("--") {
                continue; // the rest of a flag or command name
            }
            if before.ends_with("::") {
                continue; // checked with the word before it
            }
            if let Some(path) = after.strip_prefix("::") {
                let next = ident(path);
                let called = path[next.len()..].starts_with('(');
                if w.starts_with(|c: char| c.is_ascii_uppercase()) {
                    self.check_type(line, w);
                }
                if next.starts_with(|c: char| c.is_ascii_uppercase()) {
                    self.check_variant(line, w, next);
                } else if called {
                    self.check_fn(line, Owner::of(w), next);
                } else if !next.is_empty() {
                    self.gone(
                        line,
                        format!("`{w}::{next}` is neither called nor a variant"),
                    );
                }
                continue;
            }
            if after.starts_with('(') && first.is_ascii_lowercase() {
                self.check_fn(line, owner, w);
                continue;
            }
            let camel = first.is_ascii_uppercase()
                && w.chars().skip(1).any(|c| c.is_ascii_lowercase())
                && w.chars().skip(1).any(|c| c.is_ascii_uppercase())
                && !w.chars().nth(1).is_some_and(|c| c.is_ascii_uppercase());
            if w.ends_with("Request") || w.ends_with("Response") {
                if !self.src.messages.contains(w) {
                    self.gone(
                        line,
                        format!("message `{w}` is gone from proto/lbsync/v1/*.proto"),
                    );
                }
            } else if camel {
                let known = self.src.types.contains(w)
                    || self.src.rpcs.contains(w)
                    || self.src.variants.values().any(|v| v.contains(w))
                    || EXTERNAL.contains(&w.as_str());
                if !known {
                    self.gone(
                        line,
                        format!("`{w}` is no type, variant or rpc in the sources or the proto"),
                    );
                }
            }
        }
    }

    /// Only the quoted labels: node ids and shapes (`upload("..")`) are no calls.
    fn flowchart(&mut self, lines: &[(usize, &str)]) {
        for &(n, l) in lines {
            for label in l.split('"').skip(1).step_by(2) {
                self.check_text(n, label, Owner::Any);
            }
        }
    }

    fn class_diagram(&mut self, lines: &[(usize, &str)]) {
        // class -> (kind annotation, line declared)
        let mut classes: HashMap<String, (String, usize)> = HashMap::new();
        let mut members: Vec<(usize, String, String)> = Vec::new();
        let mut current: Option<String> = None;
        for &(n, raw) in lines {
            let l = raw.trim();
            if l.is_empty() || l.starts_with("%%") {
                continue;
            }
            if let Some(class) = &current {
                if l == "}" {
                    current = None;
                } else if let Some(kind) = l.strip_prefix("<<").and_then(|k| k.strip_suffix(">>")) {
                    if let Some(c) = classes.get_mut(class) {
                        c.0 = kind.to_owned();
                    }
                } else {
                    members.push((n, class.clone(), l.to_owned()));
                }
                continue;
            }
            if let Some(ns) = l.strip_prefix("namespace ") {
                let ns = ident(ns);
                if !self.src.crates.contains(ns) {
                    self.gone(n, format!("namespace `{ns}` is no crate directory"));
                }
            } else if let Some(c) = l.strip_prefix("class ") {
                let name = ident(c).to_owned();
                classes.insert(name.clone(), (String::new(), n));
                if l.ends_with('{') {
                    current = Some(name);
                }
            }
        }
        for (name, (kind, n)) in &classes {
            match kind.as_str() {
                "module" => self.check_module(*n, name),
                "trait" if !self.src.traits.contains(name) => {
                    self.gone(*n, format!("trait `{name}` is gone"))
                }
                "enum" if !self.src.enums.contains(name) => {
                    self.gone(*n, format!("enum `{name}` is gone"))
                }
                _ => self.check_type(*n, name),
            }
        }
        let owner = |classes: &HashMap<String, (String, usize)>, c: &str| -> String {
            classes.get(c).map(|k| k.0.clone()).unwrap_or_default()
        };
        for (n, class, m) in &members {
            let m = m.trim_start_matches(['+', '-', '#', '~']);
            let kind = owner(&classes, class);
            if let Some(p) = m.find('(') {
                let f = m[..p].trim();
                let o = if kind == "module" {
                    Owner::Module(class)
                } else {
                    Owner::Type(class)
                };
                self.check_fn(*n, o, f);
                self.check_text(*n, &m[p..], Owner::Any);
            } else if let Some((f, ty)) = m.split_once(':') {
                self.check_field(*n, class, f.trim());
                self.check_text(*n, ty, Owner::Any);
            } else if kind == "enum" {
                self.check_variant(*n, class, ident(m));
            } else {
                self.gone(
                    *n,
                    format!("`{m}` in `{class}` is no method, field or variant"),
                );
            }
        }
        // Relationships, outside the class blocks.
        let mut depth = 0;
        for &(n, raw) in lines {
            let l = raw.trim();
            if l.ends_with('{') {
                depth += 1;
                continue;
            }
            if l == "}" {
                depth -= 1;
                continue;
            }
            if depth > 0 {
                continue;
            }
            let (rel, label) = match l.split_once(" : ") {
                Some((r, lab)) => (r, Some(lab.trim())),
                None => (l, None),
            };
            let arrows = ["..|>", "--|>", "*--", "o--", "-->", "..>"];
            let Some((at, arrow)) = arrows.iter().find_map(|a| rel.find(a).map(|i| (i, *a))) else {
                continue;
            };
            let a = rel[..at].trim();
            let b = rel[at + arrow.len()..].trim();
            for c in [a, b] {
                if !classes.contains_key(c) {
                    self.gone(
                        n,
                        format!("`{c}` is on an arrow but declared by no `class`"),
                    );
                }
            }
            match (arrow, label) {
                ("..|>" | "--|>", _)
                    if !self.src.trait_impls.contains(&(b.to_owned(), a.to_owned())) =>
                {
                    self.gone(n, format!("there is no `impl {b} for {a}`"));
                }
                ("..|>" | "--|>", _) => {}
                ("*--" | "o--", Some(field)) => self.check_field(n, a, field),
                (_, Some(label)) => {
                    let o = if owner(&classes, b) == "module" {
                        Owner::Module(b)
                    } else {
                        Owner::Type(b)
                    };
                    self.check_text(n, label, o);
                }
                _ => {}
            }
        }
    }

    fn sequence(&mut self, lines: &[(usize, &str)]) {
        let mut actors: HashSet<String> = HashSet::new();
        for &(n, raw) in lines {
            let l = raw.trim();
            if let Some(a) = l.strip_prefix("actor ") {
                actors.insert(ident(a).to_owned());
                continue;
            }
            if let Some(p) = l.strip_prefix("participant ") {
                let id = ident(p);
                match Owner::of(id) {
                    Owner::Type(t) => self.check_type(n, t),
                    _ => self.check_module(n, id),
                }
                continue;
            }
            let arrows = ["-->>", "->>", "-->", "--x", "--)", "->", "-x", "-)"];
            let message = l.split_once(':').and_then(|(left, text)| {
                arrows
                    .iter()
                    .find_map(|a| left.find(a).map(|i| (i, *a)))
                    .map(|(i, a)| (left[i + a.len()..].trim_start_matches(['+', '-']), text))
            });
            match message {
                Some((to, text)) if is_ident(to.trim()) => {
                    let to = to.trim();
                    let owner = if actors.contains(to) {
                        Owner::Any
                    } else {
                        Owner::of(to)
                    };
                    self.check_text(n, text, owner);
                }
                _ => self.check_text(n, l, Owner::Any),
            }
        }
    }
}

/// The problems of a Markdown text's Mermaid diagrams, and which kinds of diagram it holds.
fn check(doc: &str, src: &Sources) -> (Vec<String>, Vec<String>) {
    let mut c = Checker {
        src,
        problems: Vec::new(),
    };
    let mut kinds = Vec::new();
    let mut block: Option<Vec<(usize, &str)>> = None;
    for (i, line) in doc.lines().enumerate() {
        let n = i + 1;
        match (&mut block, line.trim()) {
            (None, "```mermaid") => block = Some(Vec::new()),
            (Some(b), "```") => {
                let b = std::mem::take(b);
                block = None;
                let mut heads = b.iter().enumerate().filter(|(_, (_, l))| {
                    let l = l.trim();
                    !l.is_empty() && !l.starts_with("%%")
                });
                let Some((at, &(first, head))) = heads.next() else {
                    c.gone(n, "an empty mermaid block".into());
                    continue;
                };
                let kind = ident(head.trim()).to_owned();
                match kind.as_str() {
                    "flowchart" => c.flowchart(&b[at + 1..]),
                    "classDiagram" => c.class_diagram(&b[at + 1..]),
                    "sequenceDiagram" => c.sequence(&b[at + 1..]),
                    _ => c.gone(
                        first,
                        format!("a `{kind}` diagram, which this test cannot check"),
                    ),
                }
                kinds.push(kind);
            }
            (Some(b), _) => b.push((n, line)),
            (None, _) => {}
        }
    }
    (c.problems, kinds)
}

#[test]
fn every_name_in_the_diagrams_is_in_the_code() {
    let root = workspace();
    let src = Sources::read(&root);
    let doc = fs::read_to_string(root.join("docs/DIAGRAMS.md")).expect("reading docs/DIAGRAMS.md");
    let (problems, kinds) = check(&doc, &src);
    assert_eq!(
        kinds,
        ["flowchart", "classDiagram", "sequenceDiagram"],
        "docs/DIAGRAMS.md should hold the use cases, the class diagram and the sequence of a sync"
    );
    assert!(
        problems.is_empty(),
        "docs/DIAGRAMS.md names what the code no longer has ({} problems); rename or remove \
         them in the diagram:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checker itself: names that do not exist are reported, each with its line, and real ones
/// are not.
#[test]
fn a_name_the_code_does_not_have_is_reported_with_its_line() {
    let src = Sources::read(&workspace());
    let doc = "\
```mermaid
classDiagram
    namespace client {
        class Syncer {
            +state: StateStore
            +sync() Report
            +sink() Report
            +stale: u64
        }
        class Vanished
        class plan {
            <<module>>
            +plan(view, remote, ignored)
            +replan()
        }
        class Remote
        class PackStore
        class ChunkStore
    }
    Syncer ..> Remote : commit_batch() comit()
    PackStore ..|> ChunkStore
    Syncer ..|> ChunkStore
    Syncer *-- Remote : remotes
    Syncer --> Elsewhere
```
```mermaid
sequenceDiagram
    participant Syncer
    participant Remote
    participant Gone
    Syncer->>Remote: rpc CommitBatch(CommitBatchRequest) then rpc Teleport(TeleportRequest)
    Syncer->>Syncer: Action::Upload, Action::Sideload, FolderLock::acquire(), FolderLock::grab()
    Syncer->>Syncer: lbsync-client sync DIR --allow-mass-delete, lbsync-client frobnicate --frob
```
";
    let (problems, kinds) = check(doc, &src);
    assert_eq!(kinds, ["classDiagram", "sequenceDiagram"]);
    let expected = [
        (7, "`Syncer::sink`"),
        (8, "`Syncer.stale`"),
        (10, "`Vanished`"),
        (14, "`plan::replan`"),
        (20, "`Remote::comit`"),
        (22, "no `impl ChunkStore for Syncer`"),
        (23, "`Syncer.remotes`"),
        (24, "`Elsewhere` is on an arrow"),
        (30, "`Gone`"),
        (31, "rpc `Teleport`"),
        (31, "message `TeleportRequest`"),
        (32, "`Action::Sideload`"),
        (32, "`FolderLock::grab`"),
        (33, "command `frobnicate`"),
        (33, "flag `--frob`"),
    ];
    for (line, what) in expected {
        let prefix = format!("docs/DIAGRAMS.md:{line}: ");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&prefix) && p.contains(what)),
            "expected a problem at line {line} naming {what}, got:\n{}",
            problems.join("\n")
        );
    }
    assert_eq!(
        problems.len(),
        expected.len(),
        "only the wrong names are reported, got:\n{}",
        problems.join("\n")
    );
}
