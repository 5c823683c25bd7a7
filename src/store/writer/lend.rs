//! Lending a firm's idle write connection for a short read (see
//! [`Writer::lend`]), so a cold firm's first request opens one connection.

use std::sync::Arc;

use rusqlite::Connection;

use super::{Firm, Writer, close_without_checkpoint, exec, lock, release};

impl Writer {
    /// The firm's write connection, for a short read, while no write needs
    /// it: nothing queued, no turn running, not parked or closing. While it
    /// is lent the firm counts as scheduled, so no pool turn touches it;
    /// writes submitted meanwhile queue and run once it is back. None if the
    /// writer is busy (the caller opens a read connection instead).
    pub(crate) fn lend(&self) -> Option<Lent> {
        let mut st = lock(&self.firm.state);
        if st.scheduled || st.closing || st.done || !st.queue.is_empty() {
            return None;
        }
        let conn = st.conn.take()?;
        st.scheduled = true;
        drop(st);
        // Security invariant: a lent write connection cannot write (a read
        // that tried would fail, not commit outside the writer's batches).
        if exec(&conn, "PRAGMA query_only = ON").is_err() {
            return_conn(&self.firm, conn);
            return None;
        }
        Some(Lent {
            firm: self.firm.clone(),
            conn: Some(conn),
        })
    }
}

/// A firm's write connection lent for a read (see [`Writer::lend`]); it
/// goes back to the writer when dropped.
pub(crate) struct Lent {
    firm: Arc<Firm>,
    conn: Option<Connection>,
}

impl std::ops::Deref for Lent {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match &self.conn {
            Some(c) => c,
            None => unreachable!("a lent connection is present until it is dropped"),
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if exec(&conn, "PRAGMA query_only = OFF").is_err() {
                // It cannot write any more: let the next turn open another.
                tracing::error!(firm = %self.firm.name, "a lent write connection stays read-only; reopening it");
                close_without_checkpoint(&self.firm, conn);
                return release(&self.firm, lock(&self.firm.state));
            }
            return_conn(&self.firm, conn);
        }
    }
}

/// Gives a lent connection back and ends the lending as a turn ends.
fn return_conn(firm: &Arc<Firm>, conn: Connection) {
    let mut st = lock(&firm.state);
    st.conn = Some(conn);
    release(firm, st);
}
