use std::collections::BTreeSet;

use super::*;

fn served() -> BTreeSet<(String, String)> {
    crate::http::route_table()
        .into_iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
        .collect()
}

/// The drift guard: a route without a description, a description of a
/// route that is not served, or one described twice all fail here.
#[test]
fn every_route_is_described_once_and_nothing_else() {
    let described: Vec<(String, String)> = ops::all()
        .into_iter()
        .map(|(m, p, _)| (m.to_owned(), p.to_owned()))
        .collect();
    let unique: BTreeSet<_> = described.iter().cloned().collect();
    assert_eq!(unique.len(), described.len(), "a route is described twice");
    let served = served();
    let missing: Vec<_> = served.difference(&unique).collect();
    let extra: Vec<_> = unique.difference(&served).collect();
    assert!(missing.is_empty(), "served but not described: {missing:?}");
    assert!(extra.is_empty(), "described but not served: {extra:?}");
}

#[test]
fn every_constraint_names_a_real_property() {
    let doc = document();
    for (schema, prop, _) in constraints() {
        let p = &doc["components"]["schemas"][schema]["properties"][prop];
        assert!(p.is_object(), "{schema}.{prop} is not in the document");
    }
}

#[test]
fn the_document_lists_exactly_the_route_table() {
    let doc = document();
    let mut in_doc = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            in_doc.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    assert_eq!(in_doc, served());
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_every_code_is_documented() {
    let doc = document();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let ptr = r.strip_prefix('#').unwrap();
        assert!(doc.pointer(ptr).is_some(), "{r} does not resolve");
    }
    let codes = doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap();
    for c in crate::errors::CODES.iter().filter(|c| c.status != 0) {
        assert!(codes.contains(&json!(c.code)), "{} undocumented", c.code);
        assert!(
            doc["components"]["responses"][format!("Problem{}", c.status)].is_object(),
            "no response for {}",
            c.status
        );
    }
    // Operation ids are unique (generated clients name methods by them).
    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "operationId {id} twice");
        }
    }
}
