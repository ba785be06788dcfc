//! A thin VFS over SQLite's own that writes a commit's write-ahead-log frames with one call.
//!
//! SQLite writes each WAL frame as two `write`s, its 24-byte header and then its page, straight
//! to the file: a batch of the writer that dirties 150 pages costs 300 system calls, which was
//! the largest single cost of the writer thread (see BENCHMARKS.md). This VFS is SQLite's
//! default one ("unix") for every file but the WAL; for the WAL it gathers the frames of a
//! transaction in memory while they are appended one after another, and writes them with one
//! call before the frame that commits the transaction.
//!
//! **Invariant:** every byte written to the WAL reaches the file (the kernel's page cache, as
//! SQLite's own writes do) before the WAL index can make a commit visible, so readers in any
//! process and recovery after a crash see exactly what SQLite wrote. That holds because only
//! the frames that do not commit are ever held back, and SQLite writes the commit frame of a
//! transaction, through this VFS, after all of its other frames and before it updates the WAL
//! index:
//!
//! - a frame header is held back only if it is a plain one: page number set, commit size zero,
//!   and the salt of the log's current generation (learned from the log header, as this
//!   connection writes it or as it reads it from the file, or from a commit frame), so a page
//!   that happens to be 24 bytes long is never taken for one; its page is held back only if it
//!   is the next write, exactly after the header;
//! - every other write (the log header, a commit frame, a page rewritten in place, a header
//!   rewritten with new checksums) first writes out what is held, and then goes straight to the
//!   file; so does the write after a sync, where SQLite may split a frame at a sector boundary;
//! - every other call on the WAL file (read, sync, size, truncate, file control, memory map,
//!   close) first writes out what is held.
//!
//! A transaction whose pages spill to the WAL before it commits leaves its frames held until
//! its commit (or a read or anything else on the file): they are past the log's committed end,
//! so no reader looks at them, and a crash loses them as it loses the transaction.

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name connections open the VFS with.
const C_NAME: &CStr = c"leasehold";
const NAME: &str = match C_NAME.to_str() {
    Ok(name) => name,
    Err(_) => panic!("the VFS name is not UTF-8"),
};

/// At most this many bytes are held back; a larger transaction is written in pieces. The base
/// VFS writes at most this much in one call (it masks a write's length to 17 bits).
const HELD_LIMIT: usize = 0x1ffff;

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
/// The magic numbers that open a WAL file (checksums in little- or big-endian order).
const WAL_MAGIC: [u32; 2] = [0x377f_0682, 0x377f_0683];

/// SQLite's default VFS, which this one wraps.
struct Base(*mut ffi::sqlite3_vfs);
// The pointer is to SQLite's static default VFS, never freed or changed.
unsafe impl Send for Base {}
unsafe impl Sync for Base {}

static BASE: OnceLock<Option<Base>> = OnceLock::new();

/// Registers the VFS (once per process) and returns its name, or `None` if SQLite has no
/// default VFS to wrap or would not register it (connections then use the default).
pub(super) fn name() -> Option<&'static str> {
    BASE.get_or_init(|| unsafe { register() })
        .as_ref()
        .map(|_| NAME)
}

unsafe fn register() -> Option<Base> {
    let base = ffi::sqlite3_vfs_find(ptr::null());
    if base.is_null() {
        return None;
    }
    let mut vfs: ffi::sqlite3_vfs = *base;
    vfs.szOsFile = (INNER_OFFSET + (*base).szOsFile as usize) as c_int;
    vfs.pNext = ptr::null_mut();
    vfs.zName = C_NAME.as_ptr();
    vfs.xOpen = Some(open);
    // Every other entry is the base VFS's own, with its own `pAppData`; the VFS lives as long as
    // the process.
    let vfs = Box::leak(Box::new(vfs));
    if ffi::sqlite3_vfs_register(vfs, 0) != ffi::SQLITE_OK {
        return None;
    }
    Some(Base(base))
}

fn base() -> *mut ffi::sqlite3_vfs {
    match BASE.get() {
        Some(Some(base)) => base.0,
        // `open` is reachable only through the registered VFS.
        _ => unreachable!("the leasehold VFS is used before it is registered"),
    }
}

/// A WAL file opened through this VFS: SQLite's handle, then what is held back; the base VFS's
/// own handle follows at [`INNER_OFFSET`] in the same allocation.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    log: *mut Held,
}

const INNER_OFFSET: usize = std::mem::size_of::<WalFile>().next_multiple_of(16);

/// The frames held back, and what tells the next write's kind.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    /// The file offset of `bytes[0]`.
    start: i64,
    /// Where the page of the last held frame header goes, while it has not come.
    page_at: Option<i64>,
    /// The salt of the log's current generation, once known.
    salt: Option<[u8; 8]>,
    /// The next write goes straight to the file (it follows a sync).
    through_next: bool,
}

#[cfg(test)]
thread_local! {
    /// How many writes this thread made through the base VFS's WAL files.
    static BASE_WRITES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Held {
    fn end(&self) -> i64 {
        self.start + self.bytes.len() as i64
    }
}

unsafe fn parts<'a>(file: *mut ffi::sqlite3_file) -> (&'a mut Held, *mut ffi::sqlite3_file) {
    let wal = file as *mut WalFile;
    (&mut *(*wal).log, inner(file))
}

unsafe fn inner(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    (file as *mut u8).add(INNER_OFFSET) as *mut ffi::sqlite3_file
}

unsafe fn methods<'a>(inner: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    &*(*inner).pMethods
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let base = base();
    let Some(base_open) = (*base).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Any other file is the base VFS's, in the same memory.
        return base_open(base, name, file, flags, out_flags);
    }
    let inner = inner(file);
    let rc = base_open(base, name, inner, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        if !(*inner).pMethods.is_null() {
            if let Some(close) = methods(inner).xClose {
                close(inner);
            }
        }
        (*file).pMethods = ptr::null();
        return rc;
    }
    (*(file as *mut WalFile)).log = Box::into_raw(Box::<Held>::default());
    (*file).pMethods = &WAL_METHODS;
    ffi::SQLITE_OK
}

/// Writes out what is held.
unsafe fn flush(held: &mut Held, inner: *mut ffi::sqlite3_file) -> c_int {
    held.page_at = None;
    if held.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    let bytes = std::mem::take(&mut held.bytes);
    let rc = write_through(inner, &bytes, held.start);
    // The buffer keeps its capacity for the next transaction.
    held.bytes = bytes;
    held.bytes.clear();
    rc
}

/// Writes out what `file` holds, then makes `call` on its base VFS's handle; or returns the
/// error of that write.
unsafe fn after_flush(
    file: *mut ffi::sqlite3_file,
    call: impl FnOnce(*mut ffi::sqlite3_file) -> c_int,
) -> c_int {
    let (held, inner) = parts(file);
    match flush(held, inner) {
        ffi::SQLITE_OK => call(inner),
        rc => rc,
    }
}

unsafe fn write_through(inner: *mut ffi::sqlite3_file, bytes: &[u8], offset: i64) -> c_int {
    #[cfg(test)]
    BASE_WRITES.with(|writes| writes.set(writes.get() + 1));
    match methods(inner).xWrite {
        Some(write) => write(
            inner,
            bytes.as_ptr() as *const c_void,
            bytes.len() as c_int,
            offset,
        ),
        None => ffi::SQLITE_IOERR_WRITE,
    }
}

/// The kinds of write this VFS tells apart.
enum Write {
    /// The header of a frame that does not commit.
    PlainHeader,
    /// The page of the held frame header just before it.
    HeldPage,
    /// Anything else.
    Other,
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn salt_of(bytes: &[u8]) -> [u8; 8] {
    let mut salt = [0; 8];
    salt.copy_from_slice(bytes);
    salt
}

/// Reads the salt from the log's header, when the log was started by another connection.
unsafe fn read_salt(inner: *mut ffi::sqlite3_file) -> Option<[u8; 8]> {
    let read = methods(inner).xRead?;
    let mut header = [0u8; WAL_HEADER];
    let rc = read(
        inner,
        header.as_mut_ptr() as *mut c_void,
        WAL_HEADER as c_int,
        0,
    );
    (rc == ffi::SQLITE_OK && WAL_MAGIC.contains(&be32(&header[0..4])))
        .then(|| salt_of(&header[16..24]))
}

unsafe fn kind(held: &mut Held, inner: *mut ffi::sqlite3_file, bytes: &[u8], offset: i64) -> Write {
    let through = std::mem::take(&mut held.through_next);
    if offset == 0 && bytes.len() == WAL_HEADER {
        // A new generation of the log (often just after a checkpoint's sync).
        held.salt = Some(salt_of(&bytes[16..24]));
        return Write::Other;
    }
    if through {
        return Write::Other;
    }
    if held.page_at == Some(offset) && held.end() == offset {
        return Write::HeldPage;
    }
    if bytes.len() != FRAME_HEADER || offset < WAL_HEADER as i64 {
        return Write::Other;
    }
    if be32(&bytes[4..8]) != 0 {
        // A commit frame (or its copy): its salt is the generation's.
        held.salt = Some(salt_of(&bytes[8..16]));
        return Write::Other;
    }
    if held.salt.is_none() {
        held.salt = read_salt(inner);
    }
    if be32(&bytes[0..4]) != 0 && held.salt.as_ref() == Some(&salt_of(&bytes[8..16])) {
        Write::PlainHeader
    } else {
        Write::Other
    }
}

unsafe extern "C" fn wal_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let (held, inner) = parts(file);
    let bytes = std::slice::from_raw_parts(data as *const u8, amount.max(0) as usize);
    match kind(held, inner, bytes, offset) {
        Write::PlainHeader => {
            if !held.bytes.is_empty()
                && (held.end() != offset || held.bytes.len() + bytes.len() > HELD_LIMIT)
            {
                let rc = flush(held, inner);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
            }
            if held.bytes.is_empty() {
                held.start = offset;
            }
            held.bytes.extend_from_slice(bytes);
            held.page_at = Some(offset + FRAME_HEADER as i64);
            ffi::SQLITE_OK
        }
        Write::HeldPage => {
            if held.bytes.len() + bytes.len() > HELD_LIMIT {
                // The header goes out now, its page after it in the next piece.
                let rc = flush(held, inner);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                held.start = offset;
            }
            held.bytes.extend_from_slice(bytes);
            held.page_at = None;
            ffi::SQLITE_OK
        }
        Write::Other => {
            let rc = flush(held, inner);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            write_through(inner, bytes, offset)
        }
    }
}

unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    let (held, inner) = parts(file);
    let flushed = flush(held, inner);
    let closed = match methods(inner).xClose {
        Some(close) => close(inner),
        None => ffi::SQLITE_OK,
    };
    drop(Box::from_raw((*(file as *mut WalFile)).log));
    (*(file as *mut WalFile)).log = ptr::null_mut();
    (*file).pMethods = ptr::null();
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn wal_read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    after_flush(file, |inner| match methods(inner).xRead {
        Some(read) => read(inner, data, amount, offset),
        None => ffi::SQLITE_IOERR_READ,
    })
}

unsafe extern "C" fn wal_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    after_flush(file, |inner| match methods(inner).xTruncate {
        Some(truncate) => truncate(inner, size),
        None => ffi::SQLITE_IOERR_TRUNCATE,
    })
}

unsafe extern "C" fn wal_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    after_flush(file, |inner| {
        parts(file).0.through_next = true;
        match methods(inner).xSync {
            Some(sync) => sync(inner, flags),
            None => ffi::SQLITE_IOERR_FSYNC,
        }
    })
}

unsafe extern "C" fn wal_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    after_flush(file, |inner| match methods(inner).xFileSize {
        Some(file_size) => file_size(inner, size),
        None => ffi::SQLITE_IOERR_FSTAT,
    })
}

unsafe extern "C" fn wal_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let inner = inner(file);
    methods(inner)
        .xLock
        .map_or(ffi::SQLITE_OK, |lock| lock(inner, level))
}

unsafe extern "C" fn wal_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let inner = inner(file);
    methods(inner)
        .xUnlock
        .map_or(ffi::SQLITE_OK, |unlock| unlock(inner, level))
}

unsafe extern "C" fn wal_check_reserved_lock(
    file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    let inner = inner(file);
    match methods(inner).xCheckReservedLock {
        Some(check) => check(inner, out),
        None => {
            *out = 0;
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn wal_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    after_flush(file, |inner| {
        methods(inner)
            .xFileControl
            .map_or(ffi::SQLITE_NOTFOUND, |control| control(inner, op, arg))
    })
}

unsafe extern "C" fn wal_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let inner = inner(file);
    methods(inner).xSectorSize.map_or(4096, |size| size(inner))
}

unsafe extern "C" fn wal_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let inner = inner(file);
    methods(inner)
        .xDeviceCharacteristics
        .map_or(0, |characteristics| characteristics(inner))
}

unsafe extern "C" fn wal_shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    page_size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let inner = inner(file);
    match methods(inner).xShmMap {
        Some(map) if methods(inner).iVersion >= 2 => map(inner, page, page_size, extend, out),
        _ => ffi::SQLITE_IOERR_SHMMAP,
    }
}

unsafe extern "C" fn wal_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    let inner = inner(file);
    match methods(inner).xShmLock {
        Some(lock) if methods(inner).iVersion >= 2 => lock(inner, offset, n, flags),
        _ => ffi::SQLITE_IOERR_SHMLOCK,
    }
}

unsafe extern "C" fn wal_shm_barrier(file: *mut ffi::sqlite3_file) {
    let inner = inner(file);
    if let Some(barrier) = methods(inner)
        .xShmBarrier
        .filter(|_| methods(inner).iVersion >= 2)
    {
        barrier(inner);
    }
}

unsafe extern "C" fn wal_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    let inner = inner(file);
    match methods(inner).xShmUnmap {
        Some(unmap) if methods(inner).iVersion >= 2 => unmap(inner, delete),
        _ => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn wal_fetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    *out = ptr::null_mut();
    after_flush(file, |inner| match methods(inner).xFetch {
        Some(fetch) if methods(inner).iVersion >= 3 => fetch(inner, offset, amount, out),
        _ => ffi::SQLITE_OK,
    })
}

unsafe extern "C" fn wal_unfetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    let inner = inner(file);
    match methods(inner).xUnfetch {
        Some(unfetch) if methods(inner).iVersion >= 3 => unfetch(inner, offset, page),
        _ => ffi::SQLITE_OK,
    }
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(wal_sector_size),
    xDeviceCharacteristics: Some(wal_device_characteristics),
    xShmMap: Some(wal_shm_map),
    xShmLock: Some(wal_shm_lock),
    xShmBarrier: Some(wal_shm_barrier),
    xShmUnmap: Some(wal_shm_unmap),
    xFetch: Some(wal_fetch),
    xUnfetch: Some(wal_unfetch),
};

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::{params, Connection, OpenFlags};

    use super::*;

    const ROW_BYTES: usize = 600;

    fn open(path: &Path) -> Connection {
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), name().unwrap())
            .unwrap();
        conn.pragma_update(None, "page_size", 1024).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        // No checkpoint restarts the log under the tests' feet.
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        conn
    }

    fn insert(conn: &mut Connection, keys: std::ops::Range<i64>, fill: u8) {
        let tx = conn.transaction().unwrap();
        for k in keys {
            tx.execute(
                "INSERT OR REPLACE INTO t (k, v) VALUES (?1, ?2)",
                params![k, vec![fill; ROW_BYTES]],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    /// The rows of `t` as (count, how many hold `fill` throughout).
    fn rows(conn: &Connection, fill: u8) -> (i64, i64) {
        let count = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let mut filled = 0;
        let mut stmt = conn.prepare("SELECT v FROM t").unwrap();
        for v in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap() {
            let v = v.unwrap();
            if v.len() == ROW_BYTES && v.iter().all(|&b| b == fill) {
                filled += 1;
            }
        }
        (count, filled)
    }

    fn frames(db: &Path) -> u64 {
        let wal = super::super::beside(db, "-wal");
        (std::fs::metadata(wal).unwrap().len() - WAL_HEADER as u64) / (1024 + FRAME_HEADER as u64)
    }

    fn base_writes() -> usize {
        BASE_WRITES.with(|writes| writes.replace(0))
    }

    #[test]
    fn a_commit_reaches_the_log_in_three_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let mut conn = open(&db);
        let before = frames(&db);
        base_writes();
        insert(&mut conn, 0..100, 1);
        let (written, frames) = (base_writes(), frames(&db) - before);
        // The held frames, then the commit frame's header and page.
        assert!(frames >= 50, "only {frames} frames");
        assert_eq!(written, 3, "{written} writes for {frames} frames");
        assert_eq!(rows(&conn, 1), (100, 100));
        // A transaction larger than one write of the base VFS takes one more for each.
        insert(&mut conn, 100..300, 1);
        assert_eq!(base_writes(), 4);
        assert_eq!(rows(&conn, 1), (300, 300));
        // After a checkpoint that lets the log start over, the next transaction writes the new
        // log header and syncs it, then its first frame goes straight to the file (it follows
        // a sync), and the rest are held as before, under the new generation's salt.
        let _: (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        base_writes();
        insert(&mut conn, 0..100, 2);
        assert_eq!(base_writes(), 1 + 2 + 3);
        assert_eq!(rows(&conn, 2).1, 100);
    }

    #[test]
    fn a_commit_survives_a_crash_of_its_process() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let mut conn = open(&db);
        // A page cache of 20 pages: the transaction spills frames to the log before it commits,
        // and rewrites some of them in place (which rewrites their checksums at the commit).
        conn.pragma_update(None, "cache_size", 20).unwrap();
        let tx = conn.transaction().unwrap();
        for k in 0..500 {
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                params![k, vec![1u8; ROW_BYTES]],
            )
            .unwrap();
        }
        tx.execute("UPDATE t SET v = ?1", [vec![2u8; ROW_BYTES]])
            .unwrap();
        tx.commit().unwrap();
        // The process "dies": nothing closes the connection or checkpoints. What is in the
        // files now is what a new process recovers from the log.
        std::mem::forget(conn);
        let copy = tempfile::tempdir().unwrap();
        for suffix in ["", "-wal"] {
            std::fs::copy(
                super::super::beside(&db, suffix),
                super::super::beside(&copy.path().join("a.db"), suffix),
            )
            .unwrap();
        }
        let recovered = Connection::open(copy.path().join("a.db")).unwrap();
        assert_eq!(rows(&recovered, 2), (500, 500));
        let check: String = recovered
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn connections_read_each_others_commits_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let mut first = open(&db);
        let mut second = open(&db);
        assert_eq!(rows(&second, 1), (0, 0));
        insert(&mut first, 0..100, 1);
        assert_eq!(rows(&second, 1), (100, 100));
        // The second writes to a log the first began: it reads the log's salt from the file
        // and holds its frames back all the same.
        base_writes();
        insert(&mut second, 100..200, 1);
        assert_eq!(base_writes(), 3);
        assert_eq!(rows(&first, 1), (200, 200));
    }
}
