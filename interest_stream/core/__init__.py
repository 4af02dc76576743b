"""The core every layer shares: settings, errors, the event and output-record contracts,
the checkpoint reader and the Kafka client helpers. Imports nothing above it."""
