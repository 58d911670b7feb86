//! How the gateway counts LLM tokens, and the reply it writes. The rule is simple and documented, not
//! tiktoken's: a text is one token per 4 characters (rounded up), a chat message adds 3 for its framing,
//! and a reply of n tokens is n words "baa", so the `usage` a client reads is exact and predictable.

pub const CHARS_PER_TOKEN: usize = 4;
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 3;
const REPLY_WORD: &str = "baa";

pub fn count_text(text: &str) -> u64 {
    text.chars().count().div_ceil(CHARS_PER_TOKEN) as u64
}

/// The pieces a reply of `tokens` tokens streams as; joined, they are the whole reply.
pub fn reply_pieces(tokens: u64) -> impl Iterator<Item = &'static str> {
    (0..tokens).map(|i| if i == 0 { REPLY_WORD } else { " baa" })
}

pub fn reply_text(tokens: u64) -> String {
    reply_pieces(tokens).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_four_characters_rounded_up() {
        assert_eq!(count_text(""), 0);
        assert_eq!(count_text("abcd"), 1);
        assert_eq!(count_text("abcde"), 2);
        assert_eq!(count_text("ééé"), 1);
    }

    #[test]
    fn a_reply_of_n_tokens_counts_as_n_tokens() {
        for n in 1..50 {
            assert_eq!(count_text(&reply_text(n)), n);
        }
        assert_eq!(reply_text(3), "baa baa baa");
    }
}
