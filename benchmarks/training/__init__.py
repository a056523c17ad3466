"""The shared training loop: one run of one algorithm (``runs``), its ``Trainer``, what a plugin receives
(``context``), where its prompts and preference pairs come from (``sources``) and the compute it spends
(``budget``)."""
