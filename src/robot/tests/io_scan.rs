//! The core stays pure: its source names no runtime, file, socket, thread,
//! clock or global RNG. A scan of this folder's code (its tests excepted:
//! they read a clock for an origin, and this file names the words) keeps it
//! from regressing silently.

const FORBIDDEN: &[&str] = &[
    "tokio",
    "std::fs",
    "std::net",
    "std::thread",
    "std::process",
    "std::env",
    "Instant::now",
    "SystemTime",
    "now_ms()",
    "rand::random",
    "thread_rng",
    "rand::rng()",
    "OsRng",
    "from_os_rng",
    "UnixStream",
    "UdpSocket",
    "TcpStream",
];

fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn core_has_no_io() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/robot");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() >= 8, "the scan must see the core's files: {files:?}");
    let mut found = Vec::new();
    // The core's own code: its tests may read a clock for an origin.
    for f in files.iter().filter(|f| !f.to_string_lossy().contains("/tests/")) {
        let text = std::fs::read_to_string(f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            for word in FORBIDDEN.iter().filter(|w| line.contains(**w)) {
                found.push(format!("{}:{}: {word}: {line}", f.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "I/O in the pure core:\n{}", found.join("\n"));
}

#[test]
fn no_core_function_is_longer_than_60_lines() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/robot");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut long = Vec::new();
    for f in files.iter().filter(|f| !f.to_string_lossy().contains("/tests/")) {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let l = lines[i].trim_start();
            let indent = lines[i].len() - l.len();
            let is_fn = ["fn ", "pub fn ", "pub(super) fn ", "pub(crate) fn "].iter().any(|p| l.starts_with(p));
            if is_fn && !l.ends_with(';') {
                // The body ends at the first `}` back at the same indentation.
                let end = (i + 1..lines.len())
                    .find(|&j| lines[j].len() > indent && lines[j][..indent + 1] == format!("{}}}", " ".repeat(indent)))
                    .unwrap_or(lines.len());
                if end - i + 1 > 60 {
                    long.push(format!("{}:{}: {} lines", f.display(), i + 1, end - i + 1));
                }
                i = end;
            }
            i += 1;
        }
    }
    assert!(long.is_empty(), "functions over 60 lines in the core:\n{}", long.join("\n"));
}
