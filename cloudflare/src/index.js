import { DurableObject } from "cloudflare:workers";

export class NonceStore extends DurableObject {}

export default {
  async fetch() {
    return new Response("not found", { status: 404 });
  },
};
