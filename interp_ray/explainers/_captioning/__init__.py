"""What the captioning methods (InterpNET and Dong et al.'s captioner) share: reference sentences → token pairs and
the epoch trainer (``training``), the one greedy decoding loop (``decoding``) and the checkpoint preamble
(``checkpoint``). Private: the registry scan skips it, and no method is registered here."""
