//! Every external program that the scripts (`scripts/*.sh`, `scripts/lib/*.sh`, `.ci/run`)
//! and the test harness (`tests/**/*.rs`, also `src/` and `connectors/`) run is installed
//! by `scripts/install-deps.sh`: it is a row of that script's table. So the README's two
//! commands (`scripts/quickstart.sh`, `scripts/test.sh`) work on a fresh machine.
//!
//! Static: the files are read and scanned, nothing is run. Shell scripts are scanned by a
//! small lexer that finds the words in command position (after `;`, `|`, `&&`, newlines,
//! `$(`, `then`, `do`, wrappers such as `setsid`, `exec`, `sudo -n`, `runuser -u U --`, …),
//! skipping comments, quoted text, here-documents, `[[ … ]]`, `(( … ))`, case patterns,
//! shell builtins and the functions the scripts define. Rust files: `Command::new("…")`,
//! the PostgreSQL tools started from the server binary directory (`pg_tool(.., "…")`,
//! `bin_dir.join("…")`), the program after `Command::new("setsid")`, and the shell
//! scripts embedded as `const SCRIPT: &str = r#"…"#`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One row of the table in scripts/install-deps.sh.
#[derive(Debug)]
struct Dep {
    package: String,
    group: String,
    check: String,
}

/// A program some file runs (or probes with `command -v` / `type -P`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    program: String,
    file: String,
    line: usize,
}

/// Parses `TW_DEPS='…'` of install-deps.sh: PROGRAM PACKAGE FOR CHECK per line.
fn parse_table(script: &str) -> Result<BTreeMap<String, Dep>, String> {
    let start = script.find("TW_DEPS='").ok_or("no TW_DEPS='...' table")? + "TW_DEPS='".len();
    let len = script[start..].find('\'').ok_or("TW_DEPS table is not closed")?;
    let mut table = BTreeMap::new();
    for line in script[start..start + len].lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [program, package, group, check] = cols[..] else {
            return Err(format!("table row {line:?} does not have 4 columns"));
        };
        if !["all", "fresh-check"].contains(&group) {
            return Err(format!("table row {line:?}: FOR must be all or fresh-check"));
        }
        if check != "-" && !check.starts_with('/') {
            return Err(format!("table row {line:?}: CHECK must be - or an absolute path"));
        }
        let dep = Dep { package: package.into(), group: group.into(), check: check.into() };
        if table.insert(program.to_string(), dep).is_some() {
            return Err(format!("program {program} is listed twice"));
        }
    }
    Ok(table)
}

// ------------------------------------------------------------------ shell scanner

const SHELL_BUILTINS: &[&str] = &[
    ":",
    ".",
    "source",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "cd",
    "compgen",
    "complete",
    "continue",
    "declare",
    "dirs",
    "disown",
    "echo",
    "enable",
    "eval",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "getopts",
    "hash",
    "help",
    "history",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "set",
    "shift",
    "shopt",
    "suspend",
    "test",
    "[",
    "times",
    "trap",
    "true",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "wait",
    "command",
    "exec",
    "type",
];
/// Keywords after which the next word is again in command position.
const KEYWORDS_THEN_COMMAND: &[&str] = &["if", "then", "else", "elif", "do", "while", "until", "!", "{", "time"];
const KEYWORDS_END: &[&str] = &["fi", "done", "esac", "}", "in", "for", "select", "function"];
/// Words whose next (non-option) word is a program they run; `command`/`type` probe it.
const WRAPPERS: &[&str] =
    &["exec", "setsid", "nohup", "sudo", "command", "type", "env", "timeout", "runuser", "chroot", "xargs"];

/// A word in command position.
#[derive(Debug)]
struct Cmd {
    word: String,
    line: usize,
}

struct ShellScan {
    cmds: Vec<Cmd>,
    functions: BTreeSet<String>,
}

/// Removes the quotes of a shell word (keeps `$` expansions as text).
fn unquote(word: &str) -> String {
    word.chars().filter(|c| *c != '"' && *c != '\'').collect()
}

fn is_assignment(word: &str) -> bool {
    let name_end = word.find(['=', '[', '+']).unwrap_or(0);
    name_end > 0
        && word[..name_end].chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !word.as_bytes()[0].is_ascii_digit()
        && word.contains('=')
}

/// Finds the end (index after the closing char) of a `(`…`)` group starting after `open`
/// at `i`, skipping quotes. `depth` counts the already opened parens.
fn matching_paren(s: &[char], mut i: usize, mut depth: usize) -> usize {
    while i < s.len() {
        match s[i] {
            '\\' => i += 1,
            '\'' => {
                i += 1;
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
            }
            '"' => {
                i += 1;
                while i < s.len() && s[i] != '"' {
                    if s[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    s.len()
}

fn matching_brace(s: &[char], mut i: usize) -> usize {
    let mut depth = 1;
    while i < s.len() {
        match s[i] {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    s.len()
}

fn line_of(s: &[char], i: usize, first_line: usize) -> usize {
    first_line + s[..i.min(s.len())].iter().filter(|c| **c == '\n').count()
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    /// Next word is a command.
    Command,
    /// Arguments of a command.
    Args,
    /// Inside `case WORD in` … before the `)` of a pattern.
    CasePattern,
    /// After `case`, until `in`.
    CaseWord,
}

/// Scans shell text; `first_line` is the line number of its first character.
fn scan_shell(text: &str, first_line: usize, out: &mut ShellScan) {
    let s: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut state = State::Command;
    let mut case_depth = 0usize;
    // Pending here-documents: (delimiter, strip leading tabs, expands $( )).
    let mut heredocs: Vec<(String, bool, bool)> = Vec::new();
    // The previous word was a wrapper: the next non-option word is a command.
    let mut wrapper: Option<String> = None;
    let mut skip_next_word = false;
    let mut last_word: Option<(String, usize)> = None;

    while i < s.len() {
        let c = s[i];
        match c {
            ' ' | '\t' => {
                i += 1;
            }
            '\\' if s.get(i + 1) == Some(&'\n') => i += 2,
            '\n' => {
                i += 1;
                // Here-document bodies start on the next line.
                for (delim, strip, expands) in std::mem::take(&mut heredocs) {
                    let body_start = i;
                    let mut end = s.len();
                    let mut next = s.len();
                    let mut j = i;
                    while j < s.len() {
                        let eol = s[j..].iter().position(|c| *c == '\n').map_or(s.len(), |p| j + p);
                        let line: String = s[j..eol].iter().collect();
                        let line = if strip { line.trim_start_matches('\t').to_string() } else { line };
                        if line == delim {
                            end = j;
                            next = (eol + 1).min(s.len());
                            break;
                        }
                        j = eol + 1;
                    }
                    if expands {
                        let body: String = s[body_start..end].iter().collect();
                        scan_substitutions(&body, line_of(&s, body_start, first_line), out);
                    }
                    i = next;
                }
                if state != State::CasePattern && state != State::CaseWord {
                    state = State::Command;
                }
                wrapper = None;
                skip_next_word = false;
            }
            '#' => {
                while i < s.len() && s[i] != '\n' {
                    i += 1;
                }
            }
            ';' | '&' | '|' => {
                let two: String = s[i..(i + 2).min(s.len())].iter().collect();
                if two == ";;" || two == ";&" {
                    state = State::CasePattern;
                    i += 2;
                    continue;
                }
                if c == '&' && s.get(i + 1) == Some(&'>') {
                    // &> redirection
                    i += 2;
                    skip_next_word = true;
                    continue;
                }
                i += if two == "&&" || two == "||" { 2 } else { 1 };
                if state == State::CasePattern {
                    continue; // `a | b)` alternatives
                }
                state = State::Command;
                wrapper = None;
                skip_next_word = false;
            }
            '(' => {
                if s.get(i + 1) == Some(&'(') {
                    // (( arithmetic ))
                    i = matching_paren(&s, i + 1, 1);
                    continue;
                }
                if state == State::CasePattern {
                    i += 1;
                    continue;
                }
                if state == State::Args && s.get(i + 1) == Some(&')') && i > 0 && s[i - 1] != '=' {
                    // name() { ...: a function definition
                    if let Some((name, _)) = last_word.take() {
                        out.functions.insert(name.clone());
                        out.cmds.retain(|c| c.word != name || c.line != line_of(&s, i, first_line));
                    }
                    i += 2;
                    state = State::Command;
                    continue;
                }
                if state == State::Args {
                    // array assignment a=( ... ): not commands
                    i = matching_paren(&s, i + 1, 1);
                    continue;
                }
                i += 1;
                state = State::Command;
            }
            ')' => {
                i += 1;
                if state == State::CasePattern {
                    state = State::Command;
                }
            }
            '<' | '>' => {
                if s.get(i + 1) == Some(&'(') {
                    // process substitution
                    let end = matching_paren(&s, i + 2, 1);
                    let inner: String = s[i + 2..end.saturating_sub(1)].iter().collect();
                    scan_shell(&inner, line_of(&s, i, first_line), out);
                    i = end;
                    continue;
                }
                let three: String = s[i..(i + 3).min(s.len())].iter().collect();
                if three == "<<<" {
                    i += 3;
                    // the here-string word is data, but may hold $( )
                    continue;
                }
                if three.starts_with("<<") {
                    i += 2;
                    let strip = s.get(i) == Some(&'-');
                    if strip {
                        i += 1;
                    }
                    while s.get(i) == Some(&' ') {
                        i += 1;
                    }
                    let start = i;
                    while i < s.len() && !s[i].is_whitespace() && !";|&<>()".contains(s[i]) {
                        i += 1;
                    }
                    let raw: String = s[start..i].iter().collect();
                    let quoted = raw.contains('\'') || raw.contains('"') || raw.contains('\\');
                    heredocs.push((unquote(&raw).replace('\\', ""), strip, !quoted));
                    continue;
                }
                i += 1;
                while i < s.len() && (s[i] == '>' || s[i] == '<' || s[i] == '&' || s[i] == '|') {
                    i += 1;
                }
                if s[i - 1] == '&' {
                    // `>&2`, `2>&1`, `>&-`: the fd is part of the redirection
                    while i < s.len() && (s[i].is_ascii_digit() || s[i] == '-') {
                        i += 1;
                    }
                } else {
                    skip_next_word = true;
                }
            }
            _ => {
                // a word
                let start = i;
                let line = line_of(&s, i, first_line);
                if s[i..].starts_with(&['[', '[']) && s.get(i + 2).is_none_or(|c| c.is_whitespace()) {
                    // [[ ... ]]: skip to the closing ]] (its contents are not commands)
                    let rest: String = s[i..].iter().collect();
                    let end = rest.find(" ]]").map_or(s.len(), |p| i + rest[..p].chars().count() + 3);
                    let inner: String = s[i + 2..end.saturating_sub(2).max(i + 2)].iter().collect();
                    scan_substitutions(&inner, line, out);
                    i = end;
                    state = State::Args;
                    continue;
                }
                while i < s.len() && !s[i].is_whitespace() && !";|&<>()".contains(s[i]) {
                    match s[i] {
                        '\\' => i += 2,
                        '\'' => {
                            i += 1;
                            while i < s.len() && s[i] != '\'' {
                                i += 1;
                            }
                            i += 1;
                        }
                        '"' => {
                            i += 1;
                            while i < s.len() && s[i] != '"' {
                                if s[i] == '\\' {
                                    i += 1;
                                } else if s[i] == '$' && s.get(i + 1) == Some(&'(') {
                                    let end = matching_paren(&s, i + 1, 0);
                                    if s.get(i + 2) != Some(&'(') {
                                        let inner: String = s[i + 2..end - 1].iter().collect();
                                        scan_shell(&inner, line_of(&s, i, first_line), out);
                                    }
                                    i = end;
                                    continue;
                                } else if s[i] == '`' {
                                    let end = s[i + 1..].iter().position(|c| *c == '`').map_or(s.len(), |p| i + 1 + p);
                                    let inner: String = s[i + 1..end].iter().collect();
                                    scan_shell(&inner, line_of(&s, i, first_line), out);
                                    i = end;
                                }
                                i += 1;
                            }
                            i += 1;
                        }
                        '$' if s.get(i + 1) == Some(&'(') => {
                            let end = matching_paren(&s, i + 1, 0);
                            if s.get(i + 2) != Some(&'(') {
                                let inner: String = s[i + 2..end - 1].iter().collect();
                                scan_shell(&inner, line_of(&s, i, first_line), out);
                            }
                            i = end;
                        }
                        '$' if s.get(i + 1) == Some(&'{') => i = matching_brace(&s, i + 2),
                        '`' => {
                            let end = s[i + 1..].iter().position(|c| *c == '`').map_or(s.len(), |p| i + 1 + p);
                            let inner: String = s[i + 1..end].iter().collect();
                            scan_shell(&inner, line_of(&s, i, first_line), out);
                            i = end + 1;
                        }
                        _ => i += 1,
                    }
                }
                let i_end = i.min(s.len());
                let raw: String = s[start..i_end].iter().collect();
                i = i_end;
                if raw.is_empty() {
                    i += 1;
                    continue;
                }
                if skip_next_word {
                    skip_next_word = false;
                    continue;
                }
                let word = unquote(&raw);
                match state {
                    State::CaseWord => {
                        if word == "in" {
                            state = State::CasePattern;
                        }
                    }
                    State::CasePattern => {
                        if word == "esac" {
                            case_depth = case_depth.saturating_sub(1);
                            state = State::Args;
                        }
                    }
                    State::Args => {
                        if let Some(w) = wrapper.clone() {
                            if w == "runuser" {
                                if word == "--" {
                                    wrapper = Some("runuser--".into());
                                }
                                continue;
                            }
                            if word.starts_with('-') || is_assignment(&word) || word.chars().all(|c| c.is_ascii_digit())
                            {
                                continue;
                            }
                            if (w == "command" || w == "type") && word.contains('$') {
                                wrapper = None; // probes a program named by a variable
                                continue;
                            }
                            if w == "chroot" || w == "timeout" {
                                wrapper = Some("chroot-done".into()); // skip its first argument
                                continue;
                            }
                            wrapper = None;
                            out.cmds.push(Cmd { word: word.clone(), line });
                            if WRAPPERS.contains(&word.as_str()) || word == "as_root[@]" {
                                wrapper = Some(word.clone());
                            }
                        }
                        last_word = None;
                    }
                    State::Command => {
                        if is_assignment(&raw) {
                            if raw.ends_with('=') && s.get(i) == Some(&'(') {
                                // array assignment a=( ... ) / a+=( ... )
                                i = matching_paren(&s, i + 1, 1);
                            }
                            continue;
                        }
                        if word == "case" {
                            case_depth += 1;
                            state = State::CaseWord;
                            continue;
                        }
                        if KEYWORDS_THEN_COMMAND.contains(&word.as_str()) {
                            continue;
                        }
                        state = State::Args;
                        if KEYWORDS_END.contains(&word.as_str()) {
                            continue;
                        }
                        out.cmds.push(Cmd { word: word.clone(), line });
                        last_word = Some((word.clone(), line));
                        wrapper = None;
                        let bare = word.trim_start_matches('$').trim_start_matches('{').trim_end_matches('}');
                        if WRAPPERS.contains(&word.as_str()) || word == "as_root" || bare == "as_root[@]" {
                            wrapper = Some(word.clone());
                        }
                        if word == "pg_tool" {
                            wrapper = Some("pg_tool".into());
                        }
                    }
                }
            }
        }
    }
}

/// Scans only the `$( )` and backtick substitutions of a text (here-document bodies).
fn scan_substitutions(text: &str, first_line: usize, out: &mut ShellScan) {
    let s: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < s.len() {
        if s[i] == '$' && s.get(i + 1) == Some(&'(') && s.get(i + 2) != Some(&'(') {
            let end = matching_paren(&s, i + 1, 0);
            let inner: String = s[i + 2..end.saturating_sub(1).max(i + 2)].iter().collect();
            scan_shell(&inner, line_of(&s, i, first_line), out);
            i = end;
        } else {
            i += 1;
        }
    }
}

/// Variables the scripts run as commands, and the program each one holds ("" = the
/// tidewater binary or a function's own arguments; "<wrapper>" = runs the next word).
const SHELL_VARIABLE_COMMANDS: &[(&str, &str)] = &[
    ("PSQL", "psql"),
    ("MARIADBD", "mariadbd"),
    ("pg_ctl", "pg_ctl"),
    ("TIDEWATER", ""),
    ("TIDEWATER_BIN", ""),
    ("@", ""),
    ("as_root[@]", "<wrapper>"),
    // scripts/install-deps.sh: the downloaded rustup-init
    ("rustup_init", "rustup"),
    // scripts/bench.sh: hold names of its own functions (wait_my, fp_pg, reached, ...)
    ("wait_cmd", ""),
    ("fp_cmd", ""),
    ("check", ""),
];

/// Programs of the command words of shell files; errors for unknown dynamic commands.
fn shell_uses(files: &[(String, String)], uses: &mut Vec<Use>, errors: &mut Vec<String>) {
    let mut scans = Vec::new();
    let mut functions = BTreeSet::new();
    for (name, text) in files {
        let mut scan = ShellScan { cmds: Vec::new(), functions: BTreeSet::new() };
        scan_shell(text, 1, &mut scan);
        functions.extend(scan.functions.iter().cloned());
        scans.push((name, scan));
    }
    for (name, scan) in scans {
        for cmd in scan.cmds {
            let w = cmd.word.as_str();
            if SHELL_BUILTINS.contains(&w) || functions.contains(w) || w.ends_with(".sh") || w.is_empty() {
                continue;
            }
            let program = if let Some(var) = w.strip_prefix('$') {
                let var = var.trim_start_matches('{');
                let (var, rest) = match var.find('/') {
                    Some(p) => (&var[..p], Some(&var[p + 1..])),
                    None => (var, None),
                };
                let var = var.trim_end_matches('}');
                match rest {
                    // $PG_BIN/initdb: a PostgreSQL tool; $PG_BIN/$tool: via pg_tool's callers
                    Some(r) if r.starts_with('$') => continue,
                    Some(r) if var == "PG_BIN" => r.to_string(),
                    Some(r) if r.ends_with(".sh") => continue,
                    _ => match SHELL_VARIABLE_COMMANDS.iter().find(|(v, _)| *v == var) {
                        Some((_, "")) | Some((_, "<wrapper>")) => continue,
                        Some((_, p)) => p.to_string(),
                        None => {
                            errors.push(format!(
                                "{name}:{}: runs the program held by ${var}: add it to SHELL_VARIABLE_COMMANDS in tests/it/deps.rs",
                                cmd.line
                            ));
                            continue;
                        }
                    },
                }
            } else if w.starts_with('/') {
                w.rsplit('/').next().unwrap_or(w).to_string()
            } else if w.contains('$') || w.contains('/') {
                errors.push(format!("{name}:{}: cannot tell which program {w:?} is", cmd.line));
                continue;
            } else {
                w.to_string()
            };
            uses.push(Use { program, file: name.clone(), line: cmd.line });
        }
    }
}

// ------------------------------------------------------------------ Rust scanner

/// The string literal starting at `s[i] == '"'` and the index after it.
fn string_literal(s: &str, i: usize) -> Option<(String, usize)> {
    let rest = s.get(i..)?.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some((rest[..end].to_string(), i + end + 2))
}

/// Known non-literal `Command::new(...)` arguments and the programs they run.
const RUST_DYNAMIC_COMMANDS: &[(&str, &[&str])] = &[
    // tests/support/pg.rs pg_tool(): bin_dir.join(tool); the tools come from the callers
    ("exe", &[]),
    // tests/support/mysql.rs start_tls_mysql(): restarts mariadbd with its own command line
    ("&args[0]", &["mariadbd"]),
];

fn rust_uses(name: &str, text: &str, uses: &mut Vec<Use>, errors: &mut Vec<String>, shell: &mut Vec<(String, String)>) {
    let line_at = |i: usize| 1 + text[..i].matches('\n').count();
    let push = |program: &str, i: usize, uses: &mut Vec<Use>| {
        uses.push(Use { program: program.to_string(), file: name.to_string(), line: line_at(i) })
    };
    for (i, _) in text.match_indices("Command::new(") {
        let arg_start = i + "Command::new(".len();
        let mut depth = 1;
        let mut end = arg_start;
        for (j, c) in text[arg_start..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = arg_start + j;
                break;
            }
        }
        let arg = text[arg_start..end].trim();
        if arg.starts_with("env!(\"CARGO_BIN_EXE_") {
            continue;
        }
        if let Some((program, _)) = string_literal(arg, 0) {
            push(&program, i, uses);
            if program == "setsid" {
                // the program setsid runs: first string of the next .arg( / .args([
                let next = text[end..].find(".arg").map(|p| end + p);
                if let Some(q) = next.and_then(|p| text[p..].find('"').map(|q| p + q)) {
                    if let Some((prog, _)) = string_literal(text, q) {
                        push(&prog, q, uses);
                    }
                }
            }
            continue;
        }
        if let Some(p) = arg.find(".join(\"") {
            if let Some((program, _)) = string_literal(arg, p + ".join(".len()) {
                push(&program, i, uses);
                continue;
            }
        }
        match RUST_DYNAMIC_COMMANDS.iter().find(|(expr, _)| *expr == arg) {
            Some((_, programs)) => programs.iter().for_each(|p| push(p, i, uses)),
            None => errors.push(format!(
                "{name}:{}: Command::new({arg}) runs a program this check cannot name: \
                 add it to RUST_DYNAMIC_COMMANDS in tests/it/deps.rs",
                line_at(i)
            )),
        }
    }
    for pattern in ["pg_tool(&bin_dir, ", "pg_tool(&self.bin_dir, ", "bin_dir.join("] {
        for (i, _) in text.match_indices(pattern) {
            if let Some((program, _)) = string_literal(text, i + pattern.len()) {
                push(&program, i, uses);
            }
        }
    }
    // Shell scripts embedded in Rust (cleanup watchdogs run with `sh -c`).
    for (i, _) in text.match_indices("SCRIPT: &str = r#\"") {
        let body_start = i + "SCRIPT: &str = r#\"".len();
        if let Some(len) = text[body_start..].find("\"#") {
            let first = line_at(body_start);
            let padding = "\n".repeat(first - 1);
            shell.push((format!("{name} (SCRIPT)"), format!("{padding}{}", &text[body_start..body_start + len])));
        }
    }
}

// ------------------------------------------------------------------ the check

/// Everything that is wrong: programs used but not in the table (or only in the
/// fresh-check group), and commands the scanner cannot name.
fn check(
    table: &BTreeMap<String, Dep>,
    shell_files: &[(String, String)],
    rust_files: &[(String, String)],
) -> Vec<String> {
    let mut uses = Vec::new();
    let mut errors = Vec::new();
    let mut shell = shell_files.to_vec();
    for (name, text) in rust_files {
        rust_uses(name, text, &mut uses, &mut errors, &mut shell);
    }
    shell_uses(&shell, &mut uses, &mut errors);
    uses.sort();
    uses.dedup();
    for u in &uses {
        match table.get(&u.program) {
            None => errors.push(format!(
                "{}:{}: runs `{}`, which scripts/install-deps.sh does not install (add a row to its table)",
                u.file, u.line, u.program
            )),
            Some(dep) if dep.group != "all" && !u.file.ends_with("fresh-machine-check.sh") => errors.push(format!(
                "{}:{}: runs `{}`, which scripts/install-deps.sh installs only for {} (make it `all`)",
                u.file, u.line, u.program, dep.group
            )),
            Some(_) => {}
        }
    }
    errors
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn files_with(dir: &Path, suffix: &str, recurse: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if recurse && p.file_name().is_some_and(|n| n != "target") {
                files_with(&p, suffix, recurse, out);
            }
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
}

fn named(paths: Vec<PathBuf>) -> Vec<(String, String)> {
    let root = repo();
    paths.into_iter().map(|p| (p.strip_prefix(&root).unwrap_or(&p).display().to_string(), read(&p))).collect()
}

fn project_shell_files() -> Vec<(String, String)> {
    let root = repo();
    let mut paths = Vec::new();
    files_with(&root.join("scripts"), ".sh", true, &mut paths);
    paths.push(root.join(".ci/run"));
    named(paths)
}

fn project_rust_files() -> Vec<(String, String)> {
    let root = repo();
    let mut paths = Vec::new();
    for dir in ["tests", "src", "connectors"] {
        files_with(&root.join(dir), ".rs", true, &mut paths);
    }
    // This file's own test inputs are not commands of the project.
    paths.retain(|p| !p.ends_with("tests/it/deps.rs"));
    named(paths)
}

fn project_table() -> BTreeMap<String, Dep> {
    parse_table(&read(&repo().join("scripts/install-deps.sh"))).unwrap_or_else(|e| panic!("install-deps.sh: {e}"))
}

#[test]
fn every_program_the_scripts_and_the_test_harness_run_is_installed_by_install_deps() {
    let table = project_table();
    let shell = project_shell_files();
    let rust = project_rust_files();
    assert!(shell.len() >= 8, "scripts found: {:?}", shell.iter().map(|f| &f.0).collect::<Vec<_>>());
    let errors = check(&table, &shell, &rust);
    assert!(errors.is_empty(), "{} problems:\n{}", errors.len(), errors.join("\n"));

    // The scan really saw the programs the suite depends on (a scanner that finds
    // nothing would pass the check above).
    let mut uses = Vec::new();
    let mut errs = Vec::new();
    let mut embedded = Vec::new();
    for (name, text) in &rust {
        rust_uses(name, text, &mut uses, &mut errs, &mut embedded);
    }
    let mut all_shell = shell.clone();
    all_shell.extend(embedded);
    shell_uses(&all_shell, &mut uses, &mut errs);
    let seen: BTreeSet<&str> = uses.iter().map(|u| u.program.as_str()).collect();
    eprintln!("{} programs run by the scripts and the harness: {seen:?}", seen.len());
    for program in [
        "initdb",
        "pg_ctl",
        "psql",
        "mariadbd",
        "mariadb-install-db",
        "mariadb",
        "chromium",
        "systemd-analyze",
        "runuser",
        "setsid",
        "kill",
        "sh",
        "curl",
        "cargo",
        "apt-get",
        "debootstrap",
    ] {
        assert!(seen.contains(program), "the scan did not find {program}; it found: {seen:?}");
    }
}

#[test]
fn the_postgres_rows_point_at_the_binaries_the_harness_starts() {
    let table = project_table();
    for tool in ["initdb", "pg_ctl", "postgres", "psql"] {
        let dep = table.get(tool).unwrap_or_else(|| panic!("{tool} is not in the table"));
        assert_eq!(dep.check, format!("{}/{tool}", crate::support::pg::DEFAULT_PG_BIN), "{tool}");
        assert!(dep.package.starts_with("postgresql-"), "{tool}: {}", dep.package);
    }
    assert_eq!(table["mariadbd"].package, "mariadb-server");
    assert_eq!(table["chromium"].package, "chromium");
    assert_eq!(table["systemd-analyze"].package, "systemd");
}

#[test]
fn the_readme_commands_and_ci_install_through_install_deps_and_nothing_else_runs_apt() {
    let root = repo();
    for script in ["scripts/test.sh", "scripts/quickstart.sh", ".ci/run"] {
        let text = read(&root.join(script));
        let calls = text.lines().filter(|l| !l.trim_start().starts_with('#') && l.contains("install-deps.sh")).count();
        assert!(calls >= 1, "{script} does not run scripts/install-deps.sh");
    }
    for (name, text) in project_shell_files() {
        let installs =
            text.lines().filter(|l| !l.trim_start().starts_with('#') && l.contains("apt-get install")).count();
        if name == "scripts/install-deps.sh" {
            assert!(installs >= 1, "install-deps.sh has no apt-get install");
        } else {
            assert_eq!(installs, 0, "{name} installs packages itself: use scripts/install-deps.sh");
        }
    }
}

// ------------------------------------------------------------------ the check can fail

fn table_of(rows: &str) -> BTreeMap<String, Dep> {
    parse_table(&format!("TW_DEPS='\n{rows}\n'\n")).unwrap()
}

fn sh(text: &str) -> Vec<(String, String)> {
    vec![("scripts/x.sh".to_string(), text.to_string())]
}

#[test]
fn a_program_used_by_a_script_but_not_in_the_table_is_reported() {
    let table = table_of("curl curl all -\njq jq all -\nawk mawk all -");
    let script = r#"#!/usr/bin/env bash
set -euo pipefail
helper() { echo hi; }
# frobnicate is only mentioned in a comment
x="$(curl -fsS http://x | jq -r .a)"
if [[ -n "$x" && "$x" != frobnicate ]]; then helper; fi
cat <<'EOF'
frobnicate --in-a-heredoc
EOF
case "$1" in
pg | mysql) awk '{print}' </dev/null ;;
*) setsid zap --now ;;
esac
for ((i = 0; i < 3; i++)); do sleep 1; done
"#;
    let errors = check(&table, &sh(script), &[]);
    let text = errors.join("\n");
    assert!(text.contains("runs `zap`"), "{text}");
    assert!(text.contains("runs `setsid`"), "{text}");
    assert!(text.contains("runs `cat`"), "{text}");
    assert!(text.contains("runs `sleep`"), "{text}");
    assert!(!text.contains("frobnicate"), "comment, [[ ]] and heredoc text are not commands: {text}");
    for listed_or_builtin in ["`curl`", "`jq`", "`awk`", "`helper`", "`echo`", "`pg`", "`mysql`"] {
        assert!(!text.contains(listed_or_builtin), "{listed_or_builtin}: {text}");
    }
    assert_eq!(errors.len(), 4, "{text}");
}

#[test]
fn a_program_the_test_harness_runs_but_not_in_the_table_is_reported() {
    let table = table_of("setsid util-linux all -\nsh dash all -");
    let rust = vec![(
        "tests/support/x.rs".to_string(),
        r##"
fn f(bin_dir: &Path, name: String) {
    Command::new("chromium").arg("--headless");
    Command::new(bin_dir.join("pg_dump")).arg("x");
    Command::new(env!("CARGO_BIN_EXE_tidewater")).arg("run");
    Command::new(name).arg("x");
    Command::new("setsid").args(["sh", "-c", SCRIPT]);
    const SCRIPT: &str = r#"
while kill -0 "$1"; do sleep 1; done
"#;
}
"##
        .to_string(),
    )];
    let errors = check(&table, &[], &rust);
    let text = errors.join("\n");
    assert!(text.contains("runs `chromium`"), "{text}");
    assert!(text.contains("runs `pg_dump`"), "{text}");
    assert!(text.contains("Command::new(name)"), "a dynamic command is reported: {text}");
    assert!(text.contains("runs `sleep`"), "the embedded watchdog script is scanned: {text}");
    assert!(!text.contains("tidewater"), "{text}");
    assert_eq!(errors.len(), 4, "{text}");
}

#[test]
fn a_program_only_in_the_fresh_check_group_is_reported_for_the_readme_scripts() {
    let table = table_of("debootstrap debootstrap fresh-check -");
    let errors = check(&table, &sh("debootstrap --variant=minbase bookworm /x\n"), &[]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("only for fresh-check"), "{errors:?}");
    let ok = check(
        &table,
        &[("scripts/fresh-machine-check.sh".to_string(), "debootstrap --variant=minbase bookworm /x\n".to_string())],
        &[],
    );
    assert!(ok.is_empty(), "{ok:?}");
}

#[test]
fn a_malformed_table_row_is_an_error() {
    assert!(parse_table("TW_DEPS='\ncurl curl all\n'").is_err());
    assert!(parse_table("TW_DEPS='\ncurl curl sometimes -\n'").is_err());
    assert!(parse_table("TW_DEPS='\ncurl curl all -\ncurl curl all -\n'").is_err());
    assert!(parse_table("no table").is_err());
}
