//! The live picture of instances, and the stream of their changes.
//!
//! Every change to an instance (created, status, event, assignment, stop)
//! updates its record here and is broadcast with a snapshot of the record,
//! so that subscribers never need to read the database. The broadcast
//! channel is bounded and never blocks the sender: a subscriber that falls
//! behind is told so (and re-queries) instead of slowing the scaler.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use entity::{InstanceStatus, instance, instance_event};
use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

/// How many changes a subscriber may fall behind before it is told to
/// re-query.
pub const CHANGE_BUFFER: usize = 4096;

/// An instance as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub id: Uuid,
    pub model_id: String,
    pub backend: String,
    pub handle: Option<String>,
    pub node: Option<String>,
    pub status: InstanceStatus,
    pub status_detail: Option<Value>,
    pub request_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub ready_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub stop_reason: Option<String>,
}

impl From<instance::Model> for InstanceRecord {
    fn from(row: instance::Model) -> Self {
        InstanceRecord {
            id: row.id,
            model_id: row.model_id,
            backend: row.backend,
            handle: row.handle,
            node: row.node,
            status: row.status,
            status_detail: row.status_detail,
            request_id: row.request_id,
            created_at: row.created_at,
            ready_at: row.ready_at,
            stopped_at: row.stopped_at,
            stop_reason: row.stop_reason,
        }
    }
}

/// An instance event as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub reason: String,
    pub message: String,
    pub raw: Option<Value>,
}

impl From<instance_event::Model> for EventRecord {
    fn from(row: instance_event::Model) -> Self {
        EventRecord {
            at: row.at,
            kind: row.kind,
            reason: row.reason,
            message: row.message,
            raw: row.raw,
        }
    }
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Status,
    Event,
    Assigned,
    Stopped,
}

/// One change, with the record after it and (for updates) before it, so
/// that a subscriber filtering on status also sees an instance leave the
/// statuses it watches.
#[derive(Debug, Clone)]
pub struct InstanceChange {
    pub kind: ChangeKind,
    pub at: DateTime<Utc>,
    pub instance: Arc<InstanceRecord>,
    pub previous: Option<Arc<InstanceRecord>>,
    pub event: Option<Arc<EventRecord>>,
}

pub struct InstanceBoard {
    records: RwLock<HashMap<Uuid, Arc<InstanceRecord>>>,
    changes: broadcast::Sender<InstanceChange>,
}

impl Default for InstanceBoard {
    fn default() -> Self {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        Self {
            records: RwLock::new(HashMap::new()),
            changes,
        }
    }
}

impl InstanceBoard {
    pub fn subscribe(&self) -> broadcast::Receiver<InstanceChange> {
        self.changes.subscribe()
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<InstanceRecord>> {
        self.records
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    fn publish(
        &self,
        kind: ChangeKind,
        instance: Arc<InstanceRecord>,
        previous: Option<Arc<InstanceRecord>>,
        event: Option<Arc<EventRecord>>,
    ) {
        let _no_subscribers = self.changes.send(InstanceChange {
            kind,
            at: Utc::now(),
            instance,
            previous,
            event,
        });
    }

    /// A new instance.
    pub fn created(&self, record: InstanceRecord) {
        let record = Arc::new(record);
        let mut records = self
            .records
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        records.insert(record.id, record.clone());
        // Sent under the lock, so that changes go out in the order they
        // were made.
        self.publish(ChangeKind::Created, record, None, None);
    }

    /// Applies `change` to the instance's record and announces it as `kind`.
    /// A stopped or failed instance leaves the board after its announcement.
    pub fn update(&self, id: Uuid, kind: ChangeKind, change: impl FnOnce(&mut InstanceRecord)) {
        let mut records = self
            .records
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(current) = records.get(&id).cloned() else {
            return;
        };
        let mut next = (*current).clone();
        change(&mut next);
        let next = Arc::new(next);
        if matches!(
            next.status,
            InstanceStatus::Stopped | InstanceStatus::Failed
        ) {
            records.remove(&id);
        } else {
            records.insert(id, next.clone());
        }
        self.publish(kind, next, Some(current), None);
    }

    /// An event about an instance still on the board.
    pub fn event(&self, id: Uuid, event: EventRecord) {
        let records = self
            .records
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(record) = records.get(&id).cloned() {
            self.publish(ChangeKind::Event, record, None, Some(Arc::new(event)));
        }
    }
}
