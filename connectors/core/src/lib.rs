//! Tidewater core: the normalized change-event model shared by every connector.
//!
//! Connectors (sources and sinks) depend only on this crate; the engine sees connectors
//! only through the [`Source`] and [`Sink`] traits defined here. Nothing in this crate does
//! I/O: it holds the vocabulary (values, schemas, events, positions, error classes) and the
//! delivery contracts.

pub mod batch;
pub mod compare;
pub mod error;
pub mod event;
pub mod queue;
pub mod schema;
pub mod traits;
pub mod value;

pub use error::{ConnectorError, ErrorClass};
pub use event::{ChangeEvent, Checkpoint, Op, Transaction};
pub use schema::{Column, ColumnChanges, ColumnType, Engine, TableId, TableSchema};
pub use traits::{
    scratch_name, ApplyBatch, ApplyReport, Comparison, CopiedTable, DeadLetter, DeadLetterRecord, Difference, Isolator,
    KeyRange, MovedRow, PositionOrder, RawFormat, RawRows, RowKind, RowOrigin, Sink, SnapshotChunk, Source, SourceItem,
    SourceProgress, StreamHandle, TableChanges, TablePlan, TransactionPart, ROW_KINDS_IN_ORDER,
};
pub use value::Value;
