-- wrk script for bench/ingest.py: realistic KISSmetrics tracking calls.
--
-- Usage: wrk -t1 -c64 -d10s --latency -s bench/ingest.lua URL -- API_KEY [SEED] [POOL]
--
-- A pool of requests is built once, in init(), from a fixed seed, and request()
-- cycles through it: every server gets the same sequence, and wrk spends no
-- time building strings during the run. The mix follows what the KISSmetrics
-- browser and server libraries send: mostly events (/e) from about twenty event
-- names with a few properties each, some property sets (/s) and a few aliases
-- (/a); identities are anonymous ids or URL-encoded e-mail addresses; every call
-- carries _k, _p and _t, and a browser-like User-Agent header.
--
-- done() prints one line, "WRK_JSON {...}", that bench/ingest.py reads: the
-- counts (requests, status errors, socket errors) and latency percentiles in
-- microseconds.

local pool = {}
local cursor = 0

local EVENTS = {
   "Visited Site", "Viewed Homepage", "Viewed Product", "Viewed Pricing",
   "Searched", "Added to Cart", "Removed from Cart", "Started Checkout",
   "Purchased", "Signed Up", "Logged In", "Logged Out", "Clicked CTA",
   "Opened Email", "Clicked Email Link", "Invited Teammate", "Upgraded",
   "Downgraded", "Cancelled", "Billed", "Subscription Renewed", "Form Submitted",
}
local PAGES = {
   "/", "/pricing", "/features/funnels", "/blog/2024/05/cohort-analysis-101",
   "/products/sku-10492", "/products/sku-88311?color=blue&size=m", "/signup",
   "/checkout/step-2", "/docs/getting-started", "/account/settings/billing",
}
local REFERRERS = {
   "https://www.google.com/", "https://news.ycombinator.com/item?id=38112233",
   "https://t.co/aBcD1234", "https://www.facebook.com/", "", "",
   "https://duckduckgo.com/?q=product+analytics+self+hosted",
}
local SOURCES = { "google", "newsletter", "twitter", "facebook", "direct", "partner-blog" }
local MEDIUMS = { "cpc", "email", "social", "organic", "referral" }
local PLANS = { "Free", "Starter", "Pro", "Business", "Enterprise" }
local COUNTRIES = { "US", "GB", "DE", "FR", "BR", "IN", "JP", "CA", "AU", "NL" }
local COMPANIES = { "Acme Inc.", "Globex", "Initech", "Umbrella Corp", "Hooli", "Stark & Sons" }
local FIRST = { "ann", "bob", "carla", "dmitri", "eve", "farah", "gus", "hiro", "ines", "jo" }
local DOMAINS = { "example.com", "mail.example.org", "corp.example.net", "gmail.example" }
local AGENTS = {
   "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      .. "Chrome/124.0.0.0 Safari/537.36",
   "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
      .. "Version/17.4 Safari/605.1.15",
   "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
      .. "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
   "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
   "KISSmetrics-Ruby/1.0 (+https://github.com/kissmetrics)",
}

local function pick(list)
   return list[math.random(#list)]
end

-- encodeURIComponent, as the browser library applies it to names and values.
local function enc(s)
   return (string.gsub(s, "[^%w%-_%.~]", function(c)
      return string.format("%%%02X", string.byte(c))
   end))
end

local ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
local function anon_id()
   local t = {}
   for i = 1, 27 do
      local n = math.random(#ALNUM)
      t[i] = string.sub(ALNUM, n, n)
   end
   return table.concat(t)
end

local function email()
   local name = pick(FIRST)
   if math.random() < 0.4 then
      name = name .. "." .. pick(FIRST)
   end
   if math.random() < 0.2 then
      name = name .. "+" .. tostring(math.random(1, 99))
   end
   return name .. tostring(math.random(1, 50000)) .. "@" .. pick(DOMAINS)
end

local function person()
   if math.random() < 0.6 then
      return anon_id()
   end
   return email()
end

local function query(key, pairs_)
   local parts = { "_k=" .. key }
   for _, kv in ipairs(pairs_) do
      parts[#parts + 1] = enc(kv[1]) .. "=" .. enc(kv[2])
   end
   return table.concat(parts, "&")
end

local function event_call(key, now)
   local page = pick(PAGES)
   local props = {
      { "_p", person() },
      { "_n", pick(EVENTS) },
      { "_t", tostring(now) },
      { "_d", "1" },
      { "URL", "https://www.example.com" .. page },
   }
   local ref = pick(REFERRERS)
   if ref ~= "" then
      props[#props + 1] = { "Referrer", ref }
   end
   if math.random() < 0.5 then
      props[#props + 1] = { "Campaign Source", pick(SOURCES) }
      props[#props + 1] = { "Campaign Medium", pick(MEDIUMS) }
   end
   if math.random() < 0.3 then
      props[#props + 1] = { "Price", string.format("%d.%02d", math.random(1, 499), math.random(0, 99)) }
      props[#props + 1] = { "Product Name", "Widget " .. tostring(math.random(1, 400)) }
   end
   return "/e?" .. query(key, props)
end

local function set_call(key, now)
   local props = {
      { "_p", person() },
      { "_t", tostring(now) },
      { "Plan", pick(PLANS) },
      { "Company", pick(COMPANIES) },
      { "Country", pick(COUNTRIES) },
      { "Seats", tostring(math.random(1, 250)) },
      { "Signup Date", string.format("2024-%02d-%02d", math.random(1, 12), math.random(1, 28)) },
   }
   if math.random() < 0.5 then
      props[#props + 1] = { "Email", email() }
   end
   return "/s?" .. query(key, props)
end

local function alias_call(key, now)
   return "/a?" .. query(key, { { "_p", anon_id() }, { "_n", email() }, { "_t", tostring(now) } })
end

function init(args)
   local key = args[1] or "0000000000000000000000000000000000000000"
   local seed = tonumber(args[2] or "20240501")
   local size = tonumber(args[3] or "20000")
   math.randomseed(seed)
   local now = 1714550400
   for i = 1, size do
      now = now + math.random(0, 3)
      local r = math.random()
      local path
      if r < 0.85 then
         path = event_call(key, now)
      elseif r < 0.97 then
         path = set_call(key, now)
      else
         path = alias_call(key, now)
      end
      pool[i] = wrk.format("GET", path, {
         ["Host"] = wrk.headers["Host"],
         ["User-Agent"] = pick(AGENTS),
         ["Accept"] = "image/avif,image/webp,*/*",
      })
   end
end

function request()
   cursor = cursor % #pool + 1
   return pool[cursor]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, "mean": %.1f}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
