"""kinesyslog: a syslog and GELF relay to Amazon Kinesis Data Firehose."""

__version__ = "3.0.0.dev0"
