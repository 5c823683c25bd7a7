//! Build script:
//! 1. records the git commit the binaries are built from;
//! 2. fails the build loudly if the bundled SQLCipher's `struct
//!    sqlcipher_provider` no longer matches our Rust mirror in
//!    `src/crypto/sqlcipher.rs` (same fields, same order, same arity), since a
//!    mismatch would make SQLCipher call the wrong function pointers.
use std::path::Path;
use std::process::Command;

fn main() {
    record_commit();
    check_sqlcipher_provider();
}

fn record_commit() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=STRONGROOM_BUILD_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}

/// (field name, number of parameters) in declaration order.
type Fields = Vec<(String, usize)>;

fn check_sqlcipher_provider() {
    let rust_src = "src/crypto/sqlcipher.rs";
    println!("cargo:rerun-if-changed={rust_src}");
    let c_path = sqlcipher_src::source_dir().join(sqlcipher_src::SOURCE_FILE);
    let c = std::fs::read_to_string(&c_path)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", c_path.display())));
    let rust = std::fs::read_to_string(Path::new(rust_src))
        .unwrap_or_else(|e| fail(&format!("cannot read {rust_src}: {e}")));
    let c_fields = c_struct_fields(&c);
    let rust_fields = rust_struct_fields(&rust);
    if c_fields.is_empty() || c_fields != rust_fields {
        fail(&format!(
            "SQLCipher {} changed `struct sqlcipher_provider`.\n  C:    {c_fields:?}\n  Rust: {rust_fields:?}\nUpdate SqlcipherProvider in {rust_src} before building.",
            sqlcipher_src::SQLCIPHER_VERSION
        ));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}

fn c_struct_fields(src: &str) -> Fields {
    let Some(start) = src.find("struct sqlcipher_provider {") else {
        return Vec::new();
    };
    let body = &src[start..];
    let Some(end) = body.find("};") else {
        return Vec::new();
    };
    let body = &body["struct sqlcipher_provider {".len()..end];
    body.split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|decl| {
            if let Some(open) = decl.find("(*") {
                let name_end = decl[open..]
                    .find(')')
                    .map(|i| open + i)
                    .unwrap_or(decl.len());
                let name = decl[open + 2..name_end].trim().to_owned();
                let params = &decl[name_end + 1..];
                let inner = params.trim().trim_start_matches('(').trim_end_matches(')');
                let n = if inner.trim() == "void" || inner.trim().is_empty() {
                    0
                } else {
                    inner.split(',').count()
                };
                (name, n)
            } else {
                let name = decl
                    .rsplit(|c: char| c.is_whitespace() || c == '*')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                (name, 0)
            }
        })
        .collect()
}

fn rust_struct_fields(src: &str) -> Fields {
    let Some(start) = src.find("pub struct SqlcipherProvider {") else {
        return Vec::new();
    };
    let body = &src[start + "pub struct SqlcipherProvider {".len()..];
    let mut fields = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    let mut prev = ' ';
    for ch in body.chars() {
        let arrow = ch == '>' && prev == '-';
        prev = ch;
        match ch {
            '{' | '(' | '<' => {
                depth += 1;
                current.push(ch);
            }
            ')' | '>' if depth > 0 && !arrow => {
                depth -= 1;
                current.push(ch);
            }
            '}' if depth == 0 => break,
            ',' if depth == 0 => {
                fields.push(std::mem::take(&mut current));
            }
            _ => current.push(ch),
        }
    }
    fields
        .iter()
        .filter_map(|f| {
            let f = f.trim();
            let (name, ty) = f.split_once(':')?;
            let name = name.trim().to_owned();
            let n = match (ty.find("fn("), ty.rfind(") ->").or_else(|| ty.rfind(")>"))) {
                (Some(open), Some(close)) if close > open => {
                    let inner = &ty[open + 3..close];
                    if inner.trim().is_empty() {
                        0
                    } else {
                        inner.split(',').filter(|p| !p.trim().is_empty()).count()
                    }
                }
                _ => 0,
            };
            Some((name, n))
        })
        .collect()
}
