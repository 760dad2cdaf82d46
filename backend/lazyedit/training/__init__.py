"""Training and evaluation of lazyedit models: the procedural world, masks, stage trainers, metrics."""
