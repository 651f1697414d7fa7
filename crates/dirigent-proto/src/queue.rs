//! Work-item queues: their settings and figures, items, claims and what robots answer.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// `POST /api/v1/queues` and `PUT /api/v1/queues/{name}`: fields left out take their
/// defaults (shown).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// `[a-z0-9][a-z0-9._-]*`, at most 64 characters. With `PUT` it may be left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Attempts before an application error or an expired lease is final (3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Wait before the first retry (60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_seconds: Option<u32>,
    /// Each further retry waits this many times longer (2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<u32>,
    /// How long a claim holds an item unless extended (300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u32>,
    /// Refuse an item whose reference another live item has (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce_unique_reference: Option<bool>,
    /// Remove finished items after this many days; 0 keeps them (30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// The largest payload or output, in bytes of JSON (65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u32>,
}

/// A queue: its settings and current figures.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Queue {
    pub name: String,
    pub description: String,
    pub max_attempts: u32,
    pub retry_delay_seconds: u32,
    pub retry_backoff: u32,
    pub lease_seconds: u32,
    pub enforce_unique_reference: bool,
    pub retention_days: u32,
    pub max_payload_bytes: u32,
    pub stats: QueueStats,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// A queue's figures.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueStats {
    /// Items per status: `new`, `in_progress`, `successful`, `failed`, `abandoned`, `deleted`.
    pub counts: BTreeMap<String, u64>,
    /// Items finished successfully in the last hour.
    pub successful_last_hour: u64,
    /// Mean seconds from claim to success, over the last 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_processing_seconds: Option<f64>,
    /// When the oldest item waiting was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub oldest_new_at: Option<Timestamp>,
}

/// One item to add.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// Any JSON value.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    /// The caller's key for the item (an invoice number, say), unique in the queue when it
    /// enforces unique references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// `high`, `normal` (default) or `low`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Items with a deadline are handed out first, earliest deadline first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline: Option<Timestamp>,
    /// Not handed out before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub postpone_until: Option<Timestamp>,
}

/// `POST /api/v1/queues/{name}/items`: one item, or an array added all together or not at all.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AddItems {
    Many(Vec<NewItem>),
    One(NewItem),
}

// By hand, not `untagged`: serde's untagged buffering cannot carry raw JSON payloads.
impl<'de> Deserialize<'de> for AddItems {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<AddItems, D::Error> {
        struct Items;
        impl<'de> serde::de::Visitor<'de> for Items {
            type Value = AddItems;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an item or an array of items")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<AddItems, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(AddItems::Many)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<AddItems, A::Error> {
                NewItem::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(AddItems::One)
            }
        }
        deserializer.deserialize_any(Items)
    }
}

/// The ids of the added items, in the order given.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddedItems {
    pub ids: Vec<i64>,
}

/// A work item.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Item {
    pub id: i64,
    pub queue: String,
    /// `new`, `in_progress`, `successful`, `failed`, `abandoned` or `deleted`.
    pub status: String,
    /// `high`, `normal` or `low`.
    pub priority: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<Box<RawValue>>,
    /// `business` or `application` (or `abandoned`) after a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Claims so far.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline: Option<Timestamp>,
    /// Not handed out before this time.
    #[schema(value_type = String, format = DateTime)]
    pub available_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub lease_expires_at: Option<Timestamp>,
    /// The run of the last claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Who made the last claim: `run:ID` or `user:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Every attempt, oldest first (only when one item is asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
}

/// One attempt at an item.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub claimed_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    /// `successful`, `failed`, `retried`, `postponed`, `abandoned`, `lease_expired`,
    /// `run_lost` or `run_ended`; absent while the attempt goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// `POST /api/v1/queues/{name}/claim`: the item and the lease that holds it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Claim {
    pub item: Item,
    /// Needed to extend, complete, fail, postpone or abandon the item.
    pub lease_token: String,
    #[schema(value_type = String, format = DateTime)]
    pub lease_expires_at: Timestamp,
}

/// `POST /api/v1/queues/{name}/claims`: how many items to claim at most.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// 1 to 10,000.
    pub count: u32,
}

/// `POST /api/v1/queues/{name}/claims`: the items claimed, in claim order, and the one lease
/// that holds them all (each item is then extended, completed or failed on its own).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Claims {
    pub items: Vec<Item>,
    pub lease_token: String,
    #[schema(value_type = String, format = DateTime)]
    pub lease_expires_at: Timestamp,
}

/// The lease token, for `extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub lease_token: String,
}

/// `complete`: the lease token and what the robot produced.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub lease_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<Box<RawValue>>,
}

/// `POST /api/v1/queues/{name}/items/complete`: several claimed items to complete at once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteItems {
    /// 1 to 10,000.
    pub items: Vec<ItemCompletion>,
}

/// One item of [`CompleteItems`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemCompletion {
    pub id: i64,
    pub lease_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<Box<RawValue>>,
}

/// What became of each item of [`CompleteItems`], in the order given: each is completed or
/// refused on its own.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompletedItems {
    pub results: Vec<ItemResult>,
}

/// One item's result: without `error` it is done.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemResult {
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::error::ErrorBody>,
}

/// `fail`: a `business` error (bad data: final) or an `application` error (retried up to the
/// queue's attempts).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    pub lease_token: String,
    pub kind: String,
    #[serde(default)]
    pub message: String,
}

/// `postpone`: a claimed item (with its lease token) or a new one (without) waits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostponeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_token: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub until: Timestamp,
}

/// `abandon`: the robot gives the item up; it is not retried.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbandonRequest {
    pub lease_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Which items a bulk requeue or delete acts on; the same filters as listing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_from: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_to: Option<Timestamp>,
    /// A payload field as a dotted path (`customer.id`); needs `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The value the field must have, compared as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// How many items a bulk operation changed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkResult {
    pub count: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_item_or_many_keep_their_payloads_verbatim() {
        let one: AddItems = serde_json::from_str(r#"{"payload": {"a": [1, 2]}}"#).unwrap();
        let AddItems::One(item) = one else { panic!() };
        assert_eq!(item.payload.get(), r#"{"a": [1, 2]}"#);
        let many: AddItems =
            serde_json::from_str(r#"[{"payload": 1}, {"payload": "x", "priority": "high"}]"#)
                .unwrap();
        let AddItems::Many(items) = many else {
            panic!()
        };
        assert_eq!(items[1].payload.get(), r#""x""#);
        assert!(serde_json::from_str::<AddItems>(r#"{"payload": 1, "colour": 2}"#).is_err());
        assert!(serde_json::from_str::<AddItems>("3").is_err());
    }
}
