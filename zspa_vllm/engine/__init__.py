"""What runs in vLLM's engine-core process: the settings refused at start-up
(``config_checks``) and the scheduler that charges a pruned item's unpruned encoder work
(``encoder_budget``)."""
