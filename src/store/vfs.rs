//! Reading a database's files through SQLite's own file handles.
//!
//! SQLite's locks are POSIX record locks, and a process drops *all* of its
//! locks on a file when it closes *any* descriptor of that file. Opening a
//! database file (or its `-shm`) a second time in this process, to read it,
//! and closing it would leave every SQLite connection here unlocked without
//! knowing it: another process (a stock `sqlcipher` during recovery) would
//! then take the files for its own, rebuild the WAL index or fold the WAL
//! away under the daemon, and writes acknowledged after that would be lost.
//! So every such read goes through the connection's own `sqlite3_file`.
//! (The `-wal` file carries no locks, so it may be opened directly.)
#![allow(unsafe_code)]

use std::io;

use rusqlite::{Connection, ffi};

/// The main database file of a connection, as SQLite holds it open.
pub(crate) struct MainFile<'c> {
    file: *mut ffi::sqlite3_file,
    methods: &'c ffi::sqlite3_io_methods,
}

impl<'c> MainFile<'c> {
    /// The main file of `conn`; None if SQLite has not opened one.
    pub(crate) fn of(conn: &'c Connection) -> Option<Self> {
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: the handle lives as long as `conn`; FILE_POINTER writes one pointer.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&raw mut file).cast(),
            )
        };
        if rc != ffi::SQLITE_OK || file.is_null() {
            return None;
        }
        // SAFETY: an open sqlite3_file's methods stay set (and in place) while
        // its connection is open, which `'c` covers.
        let methods = unsafe { (*file).pMethods.as_ref()? };
        Some(Self { file, methods })
    }

    /// Fills `buf` from `offset` (an error if the file ends first).
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let read = self
            .methods
            .xRead
            .ok_or_else(|| io::Error::other("no xRead"))?;
        let len = i32::try_from(buf.len()).map_err(io::Error::other)?;
        let at = i64::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: `buf` has room for `len` bytes; the file is open (see `of`).
        match unsafe { read(self.file, buf.as_mut_ptr().cast(), len, at) } {
            ffi::SQLITE_OK => Ok(()),
            ffi::SQLITE_IOERR_SHORT_READ => Err(io::ErrorKind::UnexpectedEof.into()),
            rc => Err(io::Error::other(format!("SQLite read error {rc}"))),
        }
    }

    /// The file's size in bytes.
    pub(crate) fn size(&self) -> io::Result<u64> {
        let size = self
            .methods
            .xFileSize
            .ok_or_else(|| io::Error::other("no xFileSize"))?;
        let mut n: i64 = 0;
        // SAFETY: the file is open (see `of`); xFileSize writes one integer.
        match unsafe { size(self.file, &mut n) } {
            ffi::SQLITE_OK => u64::try_from(n).map_err(io::Error::other),
            rc => Err(io::Error::other(format!("SQLite size error {rc}"))),
        }
    }

    /// The first `N` bytes of the WAL index (`-shm`), from the mapping this
    /// connection already shares with every other; None if it has none (not
    /// in WAL mode, or no read yet).
    pub(crate) fn wal_index<const N: usize>(&self) -> Option<[u8; N]> {
        if self.methods.iVersion < 2 || N > 32_768 {
            return None;
        }
        let map = self.methods.xShmMap?;
        let mut region: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: region 0 of 32 KiB, never extended; SQLite writes one pointer,
        // to a mapping that stays valid while the connection is open.
        let rc = unsafe { map(self.file, 0, 32_768, 0, (&raw mut region).cast()) };
        if rc != ffi::SQLITE_OK || region.is_null() {
            return None;
        }
        let mut out = [0u8; N];
        let src = region.cast::<u8>();
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `i < N <= 32768`, inside the mapped region. Volatile:
            // other connections write the index concurrently.
            *b = unsafe { std::ptr::read_volatile(src.add(i)) };
        }
        Some(out)
    }
}

/// Keeps the `-wal` and `-shm` files when `conn`, the last connection,
/// closes (SQLite's persistent-WAL mode); with a `journal_size_limit`, the
/// WAL is checkpointed and truncated to zero bytes then instead of deleted.
/// Creating those two files again at every open costs more than the rest of
/// the open on ext4 (inode allocation), and a firm opens again and again.
pub(crate) fn persist_wal(conn: &Connection) -> bool {
    let mut on: std::ffi::c_int = 1;
    // SAFETY: PERSIST_WAL reads and writes one int through the pointer.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut on).cast(),
        )
    };
    rc == ffi::SQLITE_OK
}
