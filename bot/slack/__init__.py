"""The Slack adapter: the Bolt app, Block Kit messages, and a Web API gateway that does not lose messages."""
