//! Layered configuration for every command: defaults, then the TOML file
//! (`--config` / `OTPGATE_CONFIG`), then `OTPGATE_` environment variables
//! (`OTPGATE_TOKEN__LIFETIME_SECS` sets `token.lifetime_secs`; a list
//! setting takes comma-separated values), then flags.
//! An environment variable that names no setting is warned about and
//! ignored rather than silently dropped.

use std::path::Path;

use anyhow::Context;
use otpgate_server::Settings;
use toml::{Table, Value};

/// Variables the CLI reads itself; not settings.
const NOT_SETTINGS: &[&str] = &[
    "OTPGATE_CONFIG",
    "OTPGATE_URL",
    "OTPGATE_CUSTOMER_ID",
    "OTPGATE_PASSWORD",
    "OTPGATE_AUTH_TOKEN",
    "OTPGATE_REQUIRE_SERVICES",
    "OTPGATE_LOG",
];

/// Loads settings from `file` (if any) and the environment.
///
/// # Errors
/// A file that cannot be read or is not valid TOML for these settings.
pub fn load(file: Option<&Path>) -> anyhow::Result<(Settings, Vec<String>)> {
    let mut table = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("failed to read config file {}", p.display()))?;
            text.parse::<Table>()
                .with_context(|| format!("{} is not valid TOML", p.display()))?
        }
        None => Table::new(),
    };
    let base: Settings = Value::Table(table.clone())
        .try_into()
        .with_context(|| "invalid settings in the config file".to_owned())?;
    let _ = base;
    let mut warnings = Vec::new();
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OTPGATE_") && !NOT_SETTINGS.contains(&k.as_str()))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name["OTPGATE_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let mut candidate = table.clone();
        insert(&mut candidate, &path, scalar(&raw));
        // Strings that look like numbers (a secret "1234") must still work
        // for string settings: try the typed value first, then as text.
        let ok = Value::Table(candidate.clone())
            .try_into::<Settings>()
            .is_ok()
            || {
                insert(&mut candidate, &path, Value::String(raw.clone()));
                Value::Table(candidate.clone())
                    .try_into::<Settings>()
                    .is_ok()
            }
            || {
                // A list of strings, comma-separated
                // (`OTPGATE_HTTP__TRUSTED_PROXIES=10.0.0.0/8,192.0.2.1`).
                let items = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect();
                insert(&mut candidate, &path, Value::Array(items));
                Value::Table(candidate.clone())
                    .try_into::<Settings>()
                    .is_ok()
            };
        if ok {
            table = candidate;
        } else {
            warnings.push(format!(
                "ignoring {name}: it names no setting or has the wrong type"
            ));
        }
    }
    let settings: Settings = Value::Table(table).try_into()?;
    Ok((settings, warnings))
}

fn scalar(raw: &str) -> Value {
    if let Ok(i) = raw.parse::<i64>() {
        Value::Integer(i)
    } else if let Ok(b) = raw.parse::<bool>() {
        Value::Boolean(b)
    } else if let Ok(f) = raw.parse::<f64>() {
        Value::Float(f)
    } else {
        Value::String(raw.to_owned())
    }
}

fn insert(table: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        let Value::Table(next) = entry else { return };
        t = next;
    }
    t.insert(last.clone(), value);
}
