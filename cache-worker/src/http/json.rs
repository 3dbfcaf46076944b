//! The JSON the router sends: the bodies of `GET /`, the data of the SSE events, and the
//! RFC 7386 merge patches that carry a changed value as its difference from the old one.

use std::sync::Arc;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Map, Value};

use crate::versions::Synced;

/// One key's change on the wire: `{"key":K,"value":V}`, `{"key":K,"patch":P}` or
/// `{"key":K,"removed":true}`.
pub(crate) struct Change<'a, K> {
    key: &'a K,
    payload: Payload,
}

/// What a change says about the key's value, already serialized (the choice between a value
/// and a patch is made on their sizes).
enum Payload {
    Value(Box<RawValue>),
    Patch(Box<RawValue>),
    Removed,
}

impl<'a, K: Serialize> Change<'a, K> {
    /// The key has `value` now; the client holds nothing for it, or holds something that is
    /// not known here.
    pub(crate) fn value<V: Serialize>(key: &'a K, value: &V) -> serde_json::Result<Self> {
        Ok(Change {
            key,
            payload: Payload::Value(to_raw_value(value)?),
        })
    }

    /// The key has `value` now, and the client holds `before` for it (if `Some`): sent as a
    /// merge patch from `before` when that patch is exact and shorter than `value`.
    pub(crate) fn put<V: Serialize>(
        key: &'a K,
        before: Option<&V>,
        value: &V,
    ) -> serde_json::Result<Self> {
        let whole = to_raw_value(value)?;
        let payload = match before.and_then(|before| patch_between(before, value)) {
            Some(patch) if patch.get().len() < whole.get().len() => Payload::Patch(patch),
            _ => Payload::Value(whole),
        };
        Ok(Change { key, payload })
    }

    /// The key left the bucket.
    pub(crate) fn removed(key: &'a K) -> Self {
        Change {
            key,
            payload: Payload::Removed,
        }
    }
}

impl<K: Serialize> Serialize for Change<'_, K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("key", self.key)?;
        match &self.payload {
            Payload::Value(value) => map.serialize_entry("value", value)?,
            Payload::Patch(patch) => map.serialize_entry("patch", patch)?,
            Payload::Removed => map.serialize_entry("removed", &true)?,
        }
        map.end()
    }
}

/// A body of `GET /` (and, for `Full`, the data of an SSE `full` event).
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Body<'a, K: Serialize, V: Serialize> {
    // {"kind":"full","version":N,"entries":[{"key":K,"value":V},…]}
    Full {
        version: u64,
        entries: Entries<'a, K, V>,
    },
    // {"kind":"delta","from":V,"version":N,"changes":[…]}
    Delta {
        from: u64,
        version: u64,
        changes: &'a [Change<'a, K>],
    },
    // {"kind":"no_change","version":N}
    NoChange {
        version: u64,
    },
}

struct Entries<'a, K, V>(&'a [(K, Arc<V>)]);

#[derive(Serialize)]
struct Entry<'a, K, V> {
    key: &'a K,
    value: &'a V,
}

impl<K: Serialize, V: Serialize> Serialize for Entries<'_, K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(key, value)| Entry {
            key,
            value: &**value,
        }))
    }
}

/// `{"kind":"full",…}`: the whole bucket at `version`.
pub(crate) fn full<K: Serialize, V: Serialize>(
    version: u64,
    entries: &[(K, Arc<V>)],
) -> serde_json::Result<String> {
    let body: Body<'_, K, V> = Body::Full {
        version,
        entries: Entries(entries),
    };
    serde_json::to_string(&body)
}

/// The body of `GET /` for what a client needs: a delta's changes are patches where the
/// client's old value (`Merged::before`) allows a shorter exact one.
pub(crate) fn synced<K: Serialize, V: Serialize>(
    synced: &Synced<K, V>,
) -> serde_json::Result<String> {
    match synced {
        Synced::Full { version, entries } => full(*version, entries),
        Synced::Delta {
            from,
            version,
            changes,
        } => {
            let changes = changes
                .iter()
                .map(|m| match &m.value {
                    Some(value) => Change::put(&m.key, m.before.as_deref(), &**value),
                    None => Ok(Change::removed(&m.key)),
                })
                .collect::<serde_json::Result<Vec<_>>>()?;
            let body: Body<'_, K, V> = Body::Delta {
                from: *from,
                version: *version,
                changes: &changes,
            };
            serde_json::to_string(&body)
        }
        Synced::NoChange { version } => {
            let body: Body<'_, K, V> = Body::NoChange { version: *version };
            serde_json::to_string(&body)
        }
    }
}

/// `{"error":"…"}`.
pub(crate) fn error(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// The merge patch from `before` to `value`, if one exists that gives exactly `value` when
/// applied to `before`. Only objects can be patched: any other value is replaced whole, which
/// the value itself already says. A member set to `null` cannot be written in a merge patch
/// (`null` removes it), nor part of an array: for those the generated patch would give
/// something else, and the check says so.
fn patch_between<V: Serialize>(before: &V, value: &V) -> Option<Box<RawValue>> {
    let old = serde_json::to_value(before).ok()?;
    let new = serde_json::to_value(value).ok()?;
    if !(old.is_object() && new.is_object()) {
        return None;
    }
    let patch = diff(&old, &new);
    let mut patched = old;
    apply(&mut patched, &patch);
    if patched == new {
        to_raw_value(&patch).ok()
    } else {
        None
    }
}

/// An RFC 7386 merge patch from `old` to `new`: for two objects, each member of `old` that
/// `new` lacks as `null`, each member that differs as its own patch; anything else is
/// replaced by `new`. Exact unless `new` holds a `null` inside an object (see [`apply`]).
fn diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch = Map::new();
            for name in old.keys() {
                if !new.contains_key(name) {
                    patch.insert(name.clone(), Value::Null);
                }
            }
            for (name, member) in new {
                match old.get(name) {
                    Some(was) if was == member => {}
                    Some(was) => {
                        patch.insert(name.clone(), diff(was, member));
                    }
                    None => {
                        patch.insert(name.clone(), member.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

/// Applies an RFC 7386 merge patch to `target`, as a client does (RFC 7386 §2): an object
/// patch merges member by member into an object (a non-object target becomes `{}` first),
/// its `null` members remove; any other patch replaces the target.
fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(object) = target else {
        return;
    };
    for (name, member) in members {
        if member.is_null() {
            object.remove(name);
        } else {
            apply(object.entry(name.clone()).or_insert(Value::Null), member);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exact(old: Value, new: Value) -> bool {
        let patch = diff(&old, &new);
        let mut patched = old;
        apply(&mut patched, &patch);
        patched == new
    }

    #[test]
    fn a_changed_member_is_the_whole_patch() {
        let old = json!({"film": "Alien", "seats": 80, "hall": {"name": "1", "floor": 0}});
        let new = json!({"film": "Alien", "seats": 79, "hall": {"name": "1", "floor": 0}});
        assert_eq!(diff(&old, &new), json!({"seats": 79}));
        assert!(exact(old, new));
    }

    #[test]
    fn removed_members_are_null_and_nested_objects_are_patched() {
        let old = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]});
        let new = json!({"b": {"c": 2, "f": 4}, "e": [1, 3]});
        assert_eq!(
            diff(&old, &new),
            json!({"a": null, "b": {"d": null, "f": 4}, "e": [1, 3]})
        );
        assert!(exact(old, new));
    }

    #[test]
    fn a_member_set_to_null_is_not_exact() {
        assert!(!exact(json!({"a": 1}), json!({"a": null})));
        assert!(!exact(json!({"a": 1}), json!({"a": {"b": null}})));
        assert!(exact(json!({"a": 1}), json!({"a": {"b": 2}})));
    }

    #[test]
    fn apply_follows_the_rfc_examples() {
        // RFC 7386, Appendix A (a selection).
        for (target, patch, result) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ] {
            let mut patched = target;
            apply(&mut patched, &patch);
            assert_eq!(patched, result, "patch {patch}");
        }
    }

    #[derive(Serialize)]
    struct Session {
        film: &'static str,
        seats: u32,
        note: Option<&'static str>,
    }

    fn wire(change: &Change<'_, &str>) -> Value {
        serde_json::to_value(change).expect("serializes")
    }

    #[test]
    fn put_sends_a_patch_only_when_it_is_exact_and_shorter() {
        let old = Session {
            film: "The Long Film Title",
            seats: 80,
            note: Some("3D"),
        };
        let seat_sold = Session { seats: 79, ..old };
        let change = Change::put(&"s1", Some(&old), &seat_sold).expect("serializes");
        assert_eq!(wire(&change), json!({"key": "s1", "patch": {"seats": 79}}));

        let note_cleared = Session { note: None, ..old };
        let change = Change::put(&"s1", Some(&old), &note_cleared).expect("serializes");
        assert_eq!(
            wire(&change),
            json!({"key": "s1", "value": {"film": "The Long Film Title", "seats": 80, "note": null}})
        );

        let change = Change::put(&"s1", None, &seat_sold).expect("serializes");
        assert!(wire(&change).get("value").is_some());
        let change = Change::put(&"n", Some(&1), &2).expect("serializes");
        assert_eq!(wire(&change), json!({"key": "n", "value": 2}));
        assert_eq!(
            wire(&Change::removed(&"s1")),
            json!({"key": "s1", "removed": true})
        );
    }

    #[test]
    fn an_error_body_is_escaped_json() {
        let body: Value = serde_json::from_str(&error("bad \"since\"")).expect("JSON");
        assert_eq!(body, json!({"error": "bad \"since\""}));
    }
}
