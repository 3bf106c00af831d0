"""CDK stacks for the AWS side, one construct per concern."""
