// The README's JavaScript example: identify a picture through the app's named API, print the JSON answer.
// Usage: node identify.mjs URL PICTURE
import { readFile } from "node:fs/promises";
import { Client } from "@gradio/client";

const [url, picture] = process.argv.slice(2);
const app = await Client.connect(url);
const image = new Blob([await readFile(picture)], { type: "image/png" });
const result = await app.predict("/identify", { image });
console.log(JSON.stringify(result.data[0]));
process.exit(0);
