//! Integration tests against real throwaway PostgreSQL servers (started once per run by
//! `support`), one fresh database pair per test.

#![allow(clippy::unwrap_used)]

mod it;
mod support;
