"""hwopt's pass library: one technique per module. Passes load by name on first use
(`hwopt.passmanager.BUILTIN_PASSES`); importing this package registers nothing by itself."""
