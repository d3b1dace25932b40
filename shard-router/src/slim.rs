//! [`SlimVec`]: a list that is almost always empty, one pointer wide.
//! Each connection's presence subscriptions and each user's presence
//! watchers live in hash maps with an entry per connection or user; a
//! `Vec` there is 24 bytes of every entry (and of every free slot beside
//! it), for a list most connections never fill. This one is 8, and holds
//! no allocation while empty.

/// A `Vec` behind one pointer, `None` while empty.
#[allow(clippy::box_collection)] // on purpose: 8 bytes in the map, not 24
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlimVec<T>(Option<Box<Vec<T>>>);

impl<T> Default for SlimVec<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: PartialEq> SlimVec<T> {
    pub(crate) fn as_slice(&self) -> &[T] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn contains(&self, item: &T) -> bool {
        self.as_slice().contains(item)
    }

    pub(crate) fn push(&mut self, item: T) {
        self.0.get_or_insert_with(Box::default).push(item);
    }

    /// Keeps the items `keep` says yes to; frees the list once empty.
    pub(crate) fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        if let Some(list) = &mut self.0 {
            list.retain(keep);
            if list.is_empty() {
                self.0 = None;
            }
        }
    }
}

impl<T> IntoIterator for SlimVec<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.map(|list| *list).unwrap_or_default().into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_one_pointer_and_empty_holds_nothing() {
        assert_eq!(size_of::<SlimVec<u64>>(), size_of::<usize>());
        let mut list = SlimVec::default();
        assert!(list.is_empty() && list.as_slice().is_empty());
        list.push(3u64);
        list.push(5);
        assert!(list.contains(&5) && !list.contains(&4));
        assert_eq!((list.len(), list.as_slice()), (2, &[3, 5][..]));
        list.retain(|x| *x != 3);
        assert_eq!(list.as_slice(), &[5]);
        list.retain(|_| false);
        assert!(list.is_empty(), "freed once empty");
        assert_eq!(list, SlimVec::default());
        list.push(7);
        assert_eq!(list.into_iter().collect::<Vec<_>>(), [7]);
    }
}
