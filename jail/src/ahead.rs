//! Per-VM roots and cgroups made ahead of the workers that get them.
//!
//! Making a worker's root (`mkdir`, `chown`, the empty files the image and serial file are
//! mounted on) and its cgroups (a memory cgroup's creation is dear) took a blocking-pool
//! hand-off and a dozen filesystem calls on each shell build's path. So the daemon keeps a
//! few of each shape it has used made ahead, by a thread of its own: a build takes one and
//! renames it after its VM (a cgroup too where the hierarchy can rename: v1), and the
//! thread makes the next. Each is used once, by one VM, and removed with it as before; what
//! is left when the daemon ends is removed by [`Ahead::close`] (and, after a crash, by the
//! next daemon's sweep of its run dir and cgroup directory, like any VM's).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crate::cgroup::{self, Hierarchy, Limits};

/// At most this many made ahead per shape.
const PER_SHAPE: usize = 2;

/// At most this many made ahead in all: shapes no longer asked for (a service replaced
/// with another memory size) give theirs up, oldest first.
const ALL: usize = 8;

/// What a made-ahead root and cgroups must match to serve a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// An initrd file to mount on.
    pub initrd: bool,
    /// A serial file to mount on.
    pub serial: bool,
    /// A (read-only) snapshot directory to mount on.
    pub snapshot: bool,
    /// The cgroups' limits (`None`: no cgroups).
    pub limits: Option<Limits>,
}

/// One made ahead.
#[derive(Debug)]
pub(crate) struct Made {
    shape: Shape,
    /// The root directory.
    pub root: PathBuf,
    /// The cgroup directories.
    pub cgroups: Vec<PathBuf>,
}

impl Made {
    fn remove(self) {
        cgroup::remove(&self.cgroups);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// How to make a root and cgroups.
#[derive(Debug)]
pub(crate) struct Maker {
    pub base: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub cgroups: Option<Hierarchy>,
    pub cgroup_dir: String,
}

impl Maker {
    /// Make `name`'s root and cgroups in `shape`.
    pub fn make(&self, name: &str, shape: &Shape) -> io::Result<Made> {
        let root = self.base.join(name);
        crate::host::make_root(&root, self.uid, self.gid, shape)?;
        let cgroups = match (&self.cgroups, &shape.limits) {
            (Some(h), Some(limits)) => {
                h.create(&self.cgroup_dir, name, limits).inspect_err(|_| {
                    let _ = std::fs::remove_dir_all(&root);
                })?
            }
            _ => Vec::new(),
        };
        Ok(Made {
            shape: *shape,
            root,
            cgroups,
        })
    }
}

#[derive(Debug, Default)]
struct Shelf {
    made: Vec<Made>,
    closed: bool,
}

/// The made-ahead roots and cgroups of one daemon, and the thread that makes them.
#[derive(Debug)]
pub(crate) struct Ahead {
    maker: Arc<Maker>,
    shelf: Arc<Mutex<Shelf>>,
    orders: Mutex<Option<Orders>>,
}

/// The thread's order channel and the thread.
#[derive(Debug)]
struct Orders {
    tx: mpsc::Sender<Shape>,
    thread: std::thread::JoinHandle<()>,
}

fn lock(shelf: &Mutex<Shelf>) -> std::sync::MutexGuard<'_, Shelf> {
    shelf.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ahead {
    pub fn new(maker: Maker) -> Self {
        Self {
            maker: Arc::new(maker),
            shelf: Arc::default(),
            orders: Mutex::new(None),
        }
    }

    /// Make `name`'s root and cgroups now.
    pub fn make(&self, name: &str, shape: &Shape) -> io::Result<Made> {
        self.maker.make(name, shape)
    }

    /// One made ahead in `shape`, renamed to `name` (its cgroups too where they can be),
    /// if there is one whose directories are all still there; and order the next.
    pub fn take(&self, name: &str, shape: &Shape) -> Option<Made> {
        self.order(*shape);
        let found = {
            let mut shelf = lock(&self.shelf);
            let i = shelf.made.iter().position(|m| m.shape == *shape)?;
            shelf.made.swap_remove(i)
        };
        // Another daemon's start removes VM cgroups left empty for a minute.
        if !found.cgroups.iter().all(|c| c.is_dir()) {
            found.remove();
            return None;
        }
        let root = self.maker.base.join(name);
        if std::fs::rename(&found.root, &root).is_err() {
            found.remove();
            return None;
        }
        let cgroups = found
            .cgroups
            .iter()
            .map(|c| {
                let named = c.with_file_name(name);
                match std::fs::rename(c, &named) {
                    Ok(()) => named,
                    Err(_) => c.clone(),
                }
            })
            .collect();
        Some(Made {
            shape: found.shape,
            root,
            cgroups,
        })
    }

    /// Have the thread make one more in `shape` (if fewer than [`PER_SHAPE`] wait).
    fn order(&self, shape: Shape) {
        let mut orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        if orders.is_none() {
            let (tx, rx) = mpsc::channel();
            let (maker, shelf) = (self.maker.clone(), self.shelf.clone());
            let started = std::thread::Builder::new()
                .name("dust-jail-ahead".into())
                .spawn(move || make_orders(&maker, &shelf, &rx));
            let Ok(thread) = started else {
                return;
            };
            *orders = Some(Orders { tx, thread });
        }
        if let Some(o) = orders.as_ref() {
            let _ = o.tx.send(shape);
        }
    }

    /// How many wait on the shelf, made and ready to take.
    #[cfg(test)]
    pub fn ready(&self) -> usize {
        lock(&self.shelf).made.len()
    }

    /// Remove everything made ahead and make no more (the daemon is done); waits for the
    /// thread, which removes what it is making.
    pub fn close(&self) {
        let made = {
            let mut shelf = lock(&self.shelf);
            shelf.closed = true;
            std::mem::take(&mut shelf.made)
        };
        made.into_iter().for_each(Made::remove);
        let orders = self.orders.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Orders { tx, thread }) = orders {
            drop(tx);
            let _ = thread.join();
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.close();
    }
}

/// The thread: make what is ordered until the orders stop.
fn make_orders(maker: &Maker, shelf: &Mutex<Shelf>, orders: &mpsc::Receiver<Shape>) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    while let Ok(shape) = orders.recv() {
        let enough = {
            let s = lock(shelf);
            s.closed || s.made.iter().filter(|m| m.shape == shape).count() >= PER_SHAPE
        };
        if enough {
            continue;
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ahead-{:x}-{n}", std::process::id());
        let Ok(made) = maker.make(&name, &shape) else {
            continue;
        };
        let mut s = lock(shelf);
        if s.closed {
            drop(s);
            made.remove();
            continue;
        }
        s.made.push(made);
        let old = (s.made.len() > ALL)
            .then(|| s.made.iter().position(|m| m.shape != shape))
            .flatten()
            .map(|i| s.made.remove(i));
        drop(s);
        if let Some(old) = old {
            old.remove();
        }
    }
}
