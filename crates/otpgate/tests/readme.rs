//! A fresh clone holds everything its README refers to: every repository
//! path the README names (`crates/…`, `docs/…`, `tools/…`, links) exists,
//! and nothing points outside the repository.

use std::path::Path;

#[test]
fn every_path_the_readme_names_exists_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    assert!(
        !readme.contains("../"),
        "the README points outside the repository"
    );
    let mut named = Vec::new();
    for token in readme.split(|c: char| c.is_whitespace() || "`()[]<>\"'".contains(c)) {
        let token = token.trim_end_matches([',', '.', ':', ';']);
        let token = token.split('#').next().unwrap_or("");
        if ["crates/", "docs/", "tools/"]
            .iter()
            .any(|p| token.starts_with(p))
        {
            named.push(token.to_owned());
        }
    }
    assert!(named.iter().any(|p| p == "docs/api.md"), "{named:?}");
    for p in &named {
        assert!(
            root.join(p).exists(),
            "the README names {p}, which is not in the repository"
        );
    }
}

#[test]
fn the_api_reference_covers_every_documented_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let api = std::fs::read_to_string(root.join("docs/api.md")).expect("docs/api.md");
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("crates/otpgate-server/openapi.json"))
            .expect("openapi.json"),
    )
    .expect("openapi.json is JSON");
    for path in doc["paths"].as_object().expect("paths").keys() {
        assert!(
            api.contains(path.as_str()),
            "docs/api.md does not describe {path}"
        );
    }
}
