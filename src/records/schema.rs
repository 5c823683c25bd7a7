//! Collection schemas and record validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::pii;

/// Longest field and collection names.
pub const MAX_NAME: usize = 64;
pub const MAX_FIELDS: usize = 200;
/// What a masked sensitive field reads as without `records:read_sensitive`.
pub const MASK: &str = "[MASKED]";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
}

impl FieldType {
    fn accepts(self, v: &Value) -> bool {
        match self {
            FieldType::String => v.is_string(),
            FieldType::Integer => v.is_i64() || v.is_u64(),
            FieldType::Number => v.is_number(),
            FieldType::Boolean => v.is_boolean(),
            FieldType::Object => v.is_object(),
            FieldType::Array => v.is_array(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Field {
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Stored sealed under the firm's data key; masked for readers without
    /// `records:read_sensitive`; never indexed.
    #[serde(default)]
    pub sensitive: bool,
    /// Names a data subject (for right-to-erasure requests).
    #[serde(default)]
    pub subject: bool,
    /// Filterable in lists (exact match; never for sensitive fields).
    #[serde(default)]
    pub indexed: bool,
    #[serde(default)]
    pub required: bool,
}

/// What to do with PII found in a field not declared sensitive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PiiPolicy {
    /// Store as sent, warn in the response, record in the audit entry.
    #[default]
    Flag,
    /// Replace each match with a typed mask before storage.
    Redact,
    /// Refuse the write (422 naming the field and the kind).
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    pub fields: BTreeMap<String, Field>,
    /// Accept fields the schema does not declare (stored in clear, scanned).
    #[serde(default)]
    pub allow_unknown: bool,
    #[serde(default)]
    pub pii: PiiPolicy,
    /// A retention class from the config's `[retention] classes` (e.g.
    /// `7y-legal`): records older than it are deleted by the retention job.
    #[serde(default)]
    pub retention_class: Option<String>,
    /// What a record's age counts from: its creation (unset), or the ISO
    /// 8601 date held in this declared, non-sensitive string field (records
    /// without a date there are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_from: Option<String>,
}

pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

impl Schema {
    /// Checks a declared schema; the error names the problem.
    pub fn check(&self) -> Result<(), String> {
        if self.fields.is_empty() && !self.allow_unknown {
            return Err("a schema declares at least one field (or allow_unknown)".into());
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(format!("at most {MAX_FIELDS} fields"));
        }
        if let Some(from) = &self.retention_from {
            match self.fields.get(from) {
                Some(f) if f.kind == FieldType::String && !f.sensitive => {}
                _ => {
                    return Err(format!(
                        "retention_from {from:?}: name a declared string field that is not sensitive"
                    ));
                }
            }
            if self.retention_class.is_none() {
                return Err("retention_from needs a retention_class".into());
            }
        }
        for (name, f) in &self.fields {
            if !valid_name(name) {
                return Err(format!(
                    "field name {name:?}: 1 to {MAX_NAME} of a-z 0-9 _, starting with a letter"
                ));
            }
            if f.sensitive && f.indexed {
                return Err(format!(
                    "field {name:?}: a sensitive field cannot be indexed (it is never stored in clear)"
                ));
            }
            if f.indexed
                && !matches!(
                    f.kind,
                    FieldType::String | FieldType::Integer | FieldType::Boolean
                )
            {
                return Err(format!(
                    "field {name:?}: only string, integer and boolean fields can be indexed"
                ));
            }
        }
        Ok(())
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// 422 `invalid_record`.
    Shape(String),
    /// 422 `pii_detected`.
    Pii { field: String, kind: pii::Kind },
}

/// A record split for storage.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Every field not declared sensitive (after redaction).
    pub clear: Map<String, Value>,
    /// The sensitive fields, to be sealed.
    pub sensitive: Map<String, Value>,
    /// PII found in clear fields: (field path, kind).
    pub pii: Vec<(String, pii::Kind)>,
    /// Indexed fields' values as text: (field, value).
    pub index: Vec<(String, String)>,
}

/// Validates `body` against the schema and splits it for storage, applying
/// the collection's PII policy to every string outside sensitive fields.
pub fn split(schema: &Schema, body: &Value) -> Result<Split, Invalid> {
    let Some(obj) = body.as_object() else {
        return Err(Invalid::Shape("a record is a JSON object".into()));
    };
    for (name, f) in &schema.fields {
        if f.required && obj.get(name).is_none_or(Value::is_null) {
            return Err(Invalid::Shape(format!("field {name:?} is required")));
        }
    }
    let mut out = Split {
        clear: Map::new(),
        sensitive: Map::new(),
        pii: Vec::new(),
        index: Vec::new(),
    };
    for (name, v) in obj {
        let field = schema.fields.get(name);
        match field {
            None if !schema.allow_unknown => {
                return Err(Invalid::Shape(format!(
                    "field {name:?} is not in the collection's schema"
                )));
            }
            Some(f) if !v.is_null() && !f.kind.accepts(v) => {
                return Err(Invalid::Shape(format!(
                    "field {name:?} must be of type {}",
                    serde_json::to_string(&f.kind)
                        .unwrap_or_default()
                        .trim_matches('"')
                )));
            }
            _ => {}
        }
        if field.is_some_and(|f| f.sensitive) {
            out.sensitive.insert(name.clone(), v.clone());
            continue;
        }
        let mut v = v.clone();
        scan_value(schema.pii, name, &mut v, &mut out.pii)?;
        if field.is_some_and(|f| f.indexed) && !v.is_null() {
            out.index.push((name.clone(), index_text(&v)));
        }
        out.clear.insert(name.clone(), v);
    }
    Ok(out)
}

/// The text an indexed value is stored and filtered as.
pub fn index_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn scan_value(
    policy: PiiPolicy,
    path: &str,
    v: &mut Value,
    found: &mut Vec<(String, pii::Kind)>,
) -> Result<(), Invalid> {
    match v {
        Value::String(s) => {
            let hits = pii::scan(s);
            if let Some(first) = hits.first() {
                if policy == PiiPolicy::Reject {
                    return Err(Invalid::Pii {
                        field: path.to_owned(),
                        kind: first.kind,
                    });
                }
                found.extend(hits.iter().map(|h| (path.to_owned(), h.kind)));
                if policy == PiiPolicy::Redact {
                    *s = pii::redact(s, &hits);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                scan_value(policy, &format!("{path}[{i}]"), item, found)?;
            }
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                scan_value(policy, &format!("{path}.{k}"), item, found)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(pii: &str) -> Schema {
        serde_json::from_value(json!({
            "fields": {
                "name": {"type": "string", "indexed": true, "required": true},
                "ssn": {"type": "string", "sensitive": true, "subject": true},
                "notes": {"type": "string"},
                "age": {"type": "integer"}
            },
            "pii": pii
        }))
        .unwrap()
    }

    #[test]
    fn splits_sensitive_fields_and_indexes() {
        let s = split(
            &schema("flag"),
            &json!({"name": "Ann", "ssn": "123-45-6789", "age": 40}),
        )
        .unwrap();
        assert_eq!(
            s.sensitive,
            json!({"ssn": "123-45-6789"}).as_object().unwrap().clone()
        );
        assert!(!s.clear.contains_key("ssn"));
        assert_eq!(s.index, [("name".to_owned(), "Ann".to_owned())]);
        assert!(s.pii.is_empty(), "sensitive fields are not scanned");
    }

    #[test]
    fn refuses_bad_shapes() {
        let sc = schema("flag");
        for body in [
            json!([]),
            json!({"ssn": "x"}),
            json!({"name": 1}),
            json!({"name": "a", "other": 1}),
            json!({"name": "a", "age": 1.5}),
        ] {
            assert!(
                matches!(split(&sc, &body), Err(Invalid::Shape(_))),
                "{body}"
            );
        }
        let bad: Schema = serde_json::from_value(
            json!({"fields": {"x": {"type": "string", "sensitive": true, "indexed": true}}}),
        )
        .unwrap();
        assert!(bad.check().is_err());
        assert!(!valid_name("Name") && !valid_name("1a") && valid_name("client_files"));
    }

    #[test]
    fn pii_policies() {
        let body = json!({"name": "Ann", "notes": "card 4111 1111 1111 1111"});
        let f = split(&schema("flag"), &body).unwrap();
        assert_eq!(f.pii, [("notes".to_owned(), pii::Kind::PaymentCard)]);
        assert_eq!(f.clear["notes"], "card 4111 1111 1111 1111");
        let r = split(&schema("redact"), &body).unwrap();
        assert_eq!(r.clear["notes"], "card [REDACTED:payment_card]");
        assert_eq!(
            split(&schema("reject"), &body),
            Err(Invalid::Pii {
                field: "notes".into(),
                kind: pii::Kind::PaymentCard
            })
        );
        let ok = split(
            &schema("reject"),
            &json!({"name": "Ann", "notes": "4111 1111 1111 1112"}),
        );
        assert!(ok.is_ok(), "a 16-digit number failing Luhn is not a card");
    }
}
