//! `--set KEY=VALUE`: changes to an experiment's preset config without recompiling.
//!
//! `KEY` is a dot-separated path into the config as `run.json` records it: object fields by
//! name, array elements by index, `*` for every element of an array or every field of an
//! object (`studies.*.retrain.epochs=6`). `VALUE` is JSON (`6`, `0.05`, `true`,
//! `{"temperature":3.0,"weight":0.5}`, `null`); anything that does not parse as JSON is taken
//! as a string (`studies.0.cells.0.method=magnitude`). Every path segment must exist (optional
//! fields are recorded as `null`, so they exist too): a typo is an error naming the fields
//! that do exist, never a silently ignored new field. The changed config is what
//! `run.json` records, so a run stays reproducible and `--resume` matches only the same
//! changes.

use serde_json::Value;

use crate::error::{ExperimentError, Result};

/// One `KEY=VALUE` change.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConfigOverride {
    /// Dot-separated path.
    pub key: String,
    /// The new value.
    pub value: Value,
}

impl std::str::FromStr for ConfigOverride {
    type Err = ExperimentError;

    fn from_str(s: &str) -> Result<Self> {
        let (key, raw) = s.split_once('=').ok_or_else(|| {
            ExperimentError::config("--set", format!("`{s}`: expected KEY=VALUE"))
        })?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(ExperimentError::config(
                "--set",
                format!("`{s}`: the key must be dot-separated names or indices"),
            ));
        }
        let value =
            serde_json::from_str(raw.trim()).unwrap_or_else(|_| Value::String(raw.to_string()));
        Ok(ConfigOverride { key: key.to_string(), value })
    }
}

/// Applies `changes` in order to `config`.
pub fn apply_overrides(config: &mut Value, changes: &[ConfigOverride]) -> Result<()> {
    for change in changes {
        let segments: Vec<&str> = change.key.split('.').collect();
        let set = set_at(config, &segments, &change.value, &change.key, 0)?;
        if set == 0 {
            return Err(ExperimentError::config(
                "--set",
                format!("`{}`: `*` matched no element", change.key),
            ));
        }
    }
    Ok(())
}

/// Sets `value` at `path` under `node` (segments from `depth` on); returns how many places
/// were set.
fn set_at(
    node: &mut Value,
    path: &[&str],
    value: &Value,
    key: &str,
    depth: usize,
) -> Result<usize> {
    let Some((&head, rest)) = path.split_first() else {
        *node = value.clone();
        return Ok(1);
    };
    let here = || path_prefix(key, depth);
    if head == "*" {
        let children: Box<dyn Iterator<Item = &mut Value>> = match node {
            Value::Object(map) => Box::new(map.values_mut()),
            Value::Array(items) => Box::new(items.iter_mut()),
            other => {
                return Err(ExperimentError::config(
                    "--set",
                    format!("`{key}`: {} is {other}, not an object or a list", here()),
                ));
            }
        };
        let mut n = 0;
        for child in children {
            n += set_at(child, rest, value, key, depth + 1)?;
        }
        return Ok(n);
    }
    match node {
        Value::Object(map) => match map.get_mut(head) {
            Some(child) => set_at(child, rest, value, key, depth + 1),
            None => Err(ExperimentError::config(
                "--set",
                format!(
                    "`{key}`: {} has no field `{head}` (fields: {})",
                    here(),
                    map.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        },
        Value::Array(items) => {
            let len = items.len();
            let index: usize = head.parse().map_err(|_| {
                ExperimentError::config(
                    "--set",
                    format!("`{key}`: {} is a list; `{head}` is not an index or `*`", here()),
                )
            })?;
            let child = items.get_mut(index).ok_or_else(|| {
                ExperimentError::config(
                    "--set",
                    format!(
                        "`{key}`: {} has {len} elements; index {index} is past its end",
                        here()
                    ),
                )
            })?;
            set_at(child, rest, value, key, depth + 1)
        }
        other => Err(ExperimentError::config(
            "--set",
            format!("`{key}`: {} is {other}, not an object or a list", here()),
        )),
    }
}

fn path_prefix(key: &str, depth: usize) -> String {
    if depth == 0 {
        "the config".to_string()
    } else {
        format!("`{}`", key.split('.').take(depth).collect::<Vec<_>>().join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(s: &str) -> ConfigOverride {
        s.parse().unwrap()
    }

    #[test]
    fn sets_fields_indices_and_wildcards() {
        let mut c = json!({"studies": [
            {"name": "a", "retrain": {"epochs": 2}, "cells": [{"rate": 4.0}, {"rate": 8.0}],
             "distill": null},
            {"name": "b", "retrain": {"epochs": 2}, "cells": [], "distill": null}
        ]});
        apply_overrides(
            &mut c,
            &[
                change("studies.*.retrain.epochs=6"),
                change("studies.0.cells.1.rate=16"),
                change("studies.1.name=resnet"),
                change(r#"studies.0.distill={"temperature": 3.0, "weight": 0.5}"#),
            ],
        )
        .unwrap();
        assert_eq!(
            c,
            json!({"studies": [
                {"name": "a", "retrain": {"epochs": 6}, "cells": [{"rate": 4.0}, {"rate": 16}],
                 "distill": {"temperature": 3.0, "weight": 0.5}},
                {"name": "resnet", "retrain": {"epochs": 6}, "cells": [], "distill": null}
            ]})
        );
    }

    #[test]
    fn values_that_are_not_json_are_strings() {
        assert_eq!(change("a.b=magnitude").value, json!("magnitude"));
        assert_eq!(change("a.b=null").value, Value::Null);
        assert_eq!(change("a.b = 0.05").value, json!(0.05));
    }

    #[test]
    fn bad_keys_name_what_is_wrong() {
        let base = json!({"studies": [{"retrain": {"epochs": 2}}], "n": 1});
        let err = |s: &str| {
            let mut c = base.clone();
            apply_overrides(&mut c, &[change(s)]).unwrap_err().to_string()
        };
        assert!(err("studies.3.retrain.epochs=1").contains("has 1 elements; index 3"));
        assert!(err("studies.x.retrain=1").contains("`studies` is a list"));
        assert!(err("studies.0.retrian.epochs=1").contains("no field `retrian`"));
        assert!(err("studies.0.retrain.epoch=1").contains("no field `epoch` (fields: epochs)"));
        assert!(err("n.m=1").contains("`n` is 1, not an object"));
        assert!(err("n.*=1").contains("`n` is 1, not an object"));
        let mut empty = json!({"studies": []});
        assert!(
            apply_overrides(&mut empty, &[change("studies.*.x=1")])
                .unwrap_err()
                .to_string()
                .contains("matched no element")
        );
        assert!("novalue".parse::<ConfigOverride>().is_err());
        assert!("a..b=1".parse::<ConfigOverride>().is_err());
    }
}
