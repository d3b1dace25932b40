//! Time: session deadlines and TTL expiry.

use super::*;

impl<S: Storage> ShardCore<S> {
    /// TTL expiry: `Expired` receipts to the senders.
    pub(super) fn expire(&mut self, now_ms: u64) {
        for expired in self.engine.expire(now_ms) {
            let device = device_key(expired.device);
            let meta = match self.meta.get(&expired.position) {
                Some(meta) => *meta,
                None => match self.read_back(device, expired.position) {
                    Some((meta, _)) => meta,
                    None => continue,
                },
            };
            if meta.receipt.is_none() {
                let receipt = ToHome::StoreReceipt {
                    kind: fb::ReceiptKind::Expired,
                    message_ids: vec![meta.message_id],
                    at_ms: now_ms,
                    confirm: None,
                };
                self.to_home(now_ms, device, Target::User(meta.from.user), receipt);
            }
        }
        self.run_effects(now_ms);
    }
}
