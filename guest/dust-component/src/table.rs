//! A handle table for one resource type: handles are indices + 1, so 0 is never one.

use alloc::vec::Vec;

use crate::abi::Trap;

/// The live resources of one type.
pub struct Table<T> {
    name: &'static str,
    slots: Vec<Option<T>>,
}

impl<T> Table<T> {
    /// An empty table for resources called `name` (in errors).
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            slots: Vec::new(),
        }
    }

    /// Adds `value` (an `own` handed to the component) and returns its handle.
    pub fn insert(&mut self, value: T) -> u32 {
        if let Some(i) = self.slots.iter().position(Option::is_none) {
            self.slots[i] = Some(value);
            return i as u32 + 1;
        }
        self.slots.push(Some(value));
        self.slots.len() as u32
    }

    /// The resource behind a `borrow` handle.
    pub fn get(&self, handle: i32) -> Result<&T, Trap> {
        handle
            .checked_sub(1)
            .and_then(|i| self.slots.get(i as usize))
            .and_then(Option::as_ref)
            .ok_or(Trap::Handle(self.name))
    }

    /// The resource behind a `borrow` handle, to change.
    pub fn get_mut(&mut self, handle: i32) -> Result<&mut T, Trap> {
        handle
            .checked_sub(1)
            .and_then(|i| self.slots.get_mut(i as usize))
            .and_then(Option::as_mut)
            .ok_or(Trap::Handle(self.name))
    }

    /// Takes the resource of an `own` handle the component gives back (or drops).
    pub fn take(&mut self, handle: i32) -> Result<T, Trap> {
        handle
            .checked_sub(1)
            .and_then(|i| self.slots.get_mut(i as usize))
            .and_then(Option::take)
            .ok_or(Trap::Handle(self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_start_at_one_are_reused_and_refused_when_dead() {
        let mut t = Table::new("fields");
        assert_eq!(t.insert('a'), 1);
        assert_eq!(t.insert('b'), 2);
        assert_eq!(t.get(2), Ok(&'b'));
        assert_eq!(t.take(1), Ok('a'));
        assert_eq!(t.get(1), Err(Trap::Handle("fields")));
        assert_eq!(t.get(0), Err(Trap::Handle("fields")));
        assert_eq!(t.take(-3), Err(Trap::Handle("fields")));
        assert_eq!(t.insert('c'), 1);
    }
}
