"""The tuning engine: space generator, search strategy, cost model, builder, runner, records."""
