"""What training reads: text and record readers, chat and preference formats, a conversation's
token ids and labels, and tokenized shards for pretraining."""
