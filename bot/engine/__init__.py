"""The engine: signals become incidents, incidents get phase runs, runs move the lifecycle. No Slack here;
it talks to people only through the Notifier port."""
