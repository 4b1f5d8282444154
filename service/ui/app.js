// The genloop page: ask the service for samples, show them, rate them. No third-party code.
const $ = (id) => document.getElementById(id);
let info = null;

function headers() {
  const h = { "content-type": "application/json" };
  const key = $("key").value || sessionStorage.getItem("genloop-key");
  if (key) { h.authorization = `Bearer ${key}`; sessionStorage.setItem("genloop-key", key); }
  return h;
}

async function call(method, path, body) {
  const res = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || data.detail || JSON.stringify(data) || res.statusText);
  return data;
}

function show(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "muted";
}

async function load() {
  try {
    info = await call("GET", "/version");
  } catch (err) {
    show(`Cannot read /version: ${err.message} (an API key may be needed)`, true);
    return;
  }
  $("model").textContent = `${info.model} (${info.family})`;
  $("n").max = info.limits.max_samples;
  if (info.kind === "image") {
    $("label-field").hidden = false;
    $("label").replaceChildren(new Option("any", ""), ...(info.classes || []).map((c) => new Option(c, c)));
  } else {
    $("prompt-field").hidden = false;
    $("temperature-field").hidden = false;
  }
}

function stars(sampleId) {
  const box = document.createElement("div");
  box.className = "stars";
  for (let r = 1; r <= 5; r++) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = "★";
    b.title = `rate ${r} of 5`;
    b.dataset.rating = r;
    b.addEventListener("click", async () => {
      try {
        await call("POST", "/feedback", { sample_id: sampleId, rating: r });
        box.querySelectorAll("button").forEach((x) => x.classList.toggle("on", +x.dataset.rating <= r));
        let thanks = box.querySelector(".thanks");
        if (!thanks) { thanks = document.createElement("span"); thanks.className = "thanks"; box.append(thanks); }
        thanks.textContent = "saved";
      } catch (err) { show(`Rating failed: ${err.message}`, true); }
    });
    box.append(b);
  }
  return box;
}

$("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { n: +$("n").value || 1 };
  if ($("seed").value !== "") body.seed = +$("seed").value;
  if (info && info.kind === "image") { if ($("label").value) body.label = $("label").value; }
  else { body.prompt = $("prompt").value || null; body.temperature = +$("temperature").value; }
  show("Generating…");
  $("generate").disabled = true;
  try {
    const data = await call("POST", "/generate", body);
    $("samples").replaceChildren(...data.samples.map((s) => {
      const card = document.createElement("div");
      card.className = "sample";
      card.dataset.id = s.id;
      if (s.image) {
        const img = document.createElement("img");
        img.src = `data:image/png;base64,${s.image}`;
        img.alt = "generated sample";
        card.append(img);
      } else {
        const pre = document.createElement("pre");
        pre.textContent = s.text;
        card.append(pre);
      }
      card.append(stars(s.id));
      return card;
    }));
    show(`${data.samples.length} samples from ${data.model}. Rate them: ratings go to the retraining data.`);
  } catch (err) {
    show(`Generate failed: ${err.message}`, true);
  } finally {
    $("generate").disabled = false;
  }
});

load();
